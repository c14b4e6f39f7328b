"""Model pieces (pure, jittable): the U-Net, its losses, on-device augmentation."""
