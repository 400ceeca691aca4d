"""Steering's former home, kept so that ``from attnlrp.steering import steer`` keeps working: it lives in
``attnlrp.latent.steering`` now."""

from .latent.steering import *  # noqa: F401,F403
from .latent.steering import __all__  # noqa: F401
