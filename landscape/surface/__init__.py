"""Loss surfaces: directions in parameter space and the loss on grids along them (Li et al. 2018)."""

from landscape.surface import directions
from landscape.surface.directions import Directions, filter_normalized, from_vectors, layer_normalized, random
from landscape.surface.grid import Surface, interpolate, surface

__all__ = [
    "Directions",
    "Surface",
    "directions",
    "filter_normalized",
    "from_vectors",
    "interpolate",
    "layer_normalized",
    "random",
    "surface",
]
