"""Runtime aliases so detectron2 0.6 runs on newer numpy / Pillow.

detectron2 0.6 (the PyPI-only install route) uses ``np.int``, ``np.float``, ... and
``PIL.Image.LINEAR``, removed in numpy 1.24 and Pillow 10. We pin numpy 1.23.5 and
Pillow 9.5.0, but set the aliases where missing so a user's newer stack still works.
"""
import numpy as np
from PIL import Image

for _name, _type in (("bool", bool), ("int", int), ("float", float), ("object", object), ("str", str)):
    if _name not in np.__dict__:
        setattr(np, _name, _type)
if not hasattr(Image, "LINEAR"):
    Image.LINEAR = Image.BILINEAR
