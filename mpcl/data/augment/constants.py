"""Numbers the eager colour ops (:mod:`.colour`, :mod:`.jitter`) and the compiled CPU kernel
(:mod:`.colour_cpu`) must agree on, so both produce the same views."""

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)

# Op ids used by JitterParams.order and the factor columns (torchvision's ColorJitter fn_idx).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

HUE_CENTER = (3.0, 5.0, 1.0)  # 6 x hue at which channel R, G, B is the minimum
