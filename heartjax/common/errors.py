"""The one error type a user can cause: it names the file or setting and says what to do."""


class HeartjaxError(ValueError):
    """A problem with the user's input (file, folder, layout or config value).

    The message always names the offending file or setting and says what to do about it.
    """
