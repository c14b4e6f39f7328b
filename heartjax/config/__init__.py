"""The config layer, a leaf (it imports no data, model or train code): the schema (`schema`: frozen dataclasses,
the pieces' options in `options` and `augment`), the presets (`presets`), overrides and JSON (`overrides`) and
the one validation path (`validation`). This module only gathers their public names.
"""

from heartjax.config.augment import AugmentConfig, identity_config
from heartjax.config.options import LossConfig, ModelConfig, OptimConfig
from heartjax.config.overrides import (apply_overrides, apply_tree, from_dict, json_ready, override, parse_value,
                                       to_dict, to_json, tupled)
from heartjax.config.schema import (KINDS, Config, DataConfig, InferConfig, KindInferConfig, KindModelConfig,
                                    KindPlanConfig, KindTable, Model25dConfig, PlanConfig, SamplingConfig,
                                    TrainConfig, get, infer_settings, infer_source, section_of, unet_settings)
from heartjax.config.validation import validate

__all__ = ["AugmentConfig", "identity_config", "LossConfig", "ModelConfig", "OptimConfig", "apply_overrides",
           "apply_tree", "from_dict", "json_ready", "override", "parse_value", "to_dict", "to_json", "tupled", "KINDS",
           "Config", "DataConfig", "InferConfig", "KindInferConfig", "KindModelConfig", "KindPlanConfig", "KindTable",
           "Model25dConfig", "PlanConfig", "SamplingConfig", "TrainConfig", "get", "infer_settings", "infer_source",
           "section_of", "unet_settings", "validate"]
