"""What the generator draws scenes from: endmember spectra, cloud and haze spectral shapes, land covers, and the
catalogue of locations (each a biome with its own cover mix)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

#: Spectra (surface reflectance in B02, B03, B04, B08), typical Sentinel-2 L2A values
ENDMEMBERS: Dict[str, Tuple[float, float, float, float]] = {
    "water_clear": (0.045, 0.040, 0.022, 0.012),
    "water_turbid": (0.065, 0.085, 0.070, 0.035),
    "veg_dense": (0.025, 0.055, 0.030, 0.380),
    "veg_dry": (0.055, 0.080, 0.090, 0.240),
    "soil_dark": (0.060, 0.085, 0.110, 0.170),
    "soil_bright": (0.120, 0.165, 0.225, 0.290),
    "sand": (0.200, 0.280, 0.360, 0.430),
    "rock": (0.090, 0.110, 0.125, 0.160),
    "snow_fresh": (0.860, 0.840, 0.810, 0.700),
    "snow_old": (0.550, 0.540, 0.510, 0.400),
    "snow_dirty": (0.300, 0.300, 0.290, 0.250),
    "salt": (0.420, 0.450, 0.470, 0.500),
    "concrete": (0.150, 0.160, 0.170, 0.210),
    "roof_dark": (0.070, 0.080, 0.090, 0.120),
    "roof_bright": (0.300, 0.320, 0.330, 0.360),
}
#: Cloud-top spectral shape (B02, B03, B04, B08) relative to B02, from the thick cloud of real chip adxp.
CLOUD_SHAPE = np.array([1.00, 0.93, 0.87, 0.80], np.float32)
#: Haze (path radiance) spectral weights: strongest in blue, weakest in NIR.
HAZE_SHAPE = np.array([1.00, 0.80, 0.60, 0.35], np.float32)

COVERS = ("water", "forest", "cropland", "grassland", "bare", "desert", "snow", "urban")
#: Covers made brighter / more frequent by the difficulty knob (bright, white ground that looks like cloud).
BRIGHT_COVERS = ("snow", "desert", "urban")


@dataclass(frozen=True)
class Location:
    name: str
    lat: float
    lon: float
    covers: Dict[str, float]
    relief: float = 0.2  # 0 flat .. 1 mountainous
    cloudiness: float = 1.0  # scales the chance of cloud cover

    @property
    def epsg(self) -> int:
        zone = int((self.lon + 180) // 6) + 1
        return (32600 if self.lat >= 0 else 32700) + zone


# A catalogue of places, each a biome with its own cover mix, in eight triplets of similar biomes. The held-out
# (test) locations take one place of every triplet, so every seed's test split covers every kind of scene.
LOCATIONS: Tuple[Location, ...] = (
    # arctic coasts
    Location("Nuuk", 64.2, -51.7, {"snow": .45, "water": .30, "bare": .25}, .70, 1.1),
    Location("Tromso", 69.6, 18.9, {"snow": .50, "water": .30, "forest": .20}, .75, 1.2),
    Location("Reykjavik", 64.1, -21.9, {"snow": .30, "bare": .40, "water": .30}, .60, 1.2),
    # high mountains
    Location("Lhasa", 29.7, 91.1, {"snow": .30, "bare": .45, "urban": .10, "grassland": .15}, .90, .8),
    Location("La Paz", -16.5, -68.1, {"bare": .40, "snow": .20, "urban": .20, "grassland": .20}, .90, .9),
    Location("Kathmandu", 27.7, 85.3, {"snow": .20, "forest": .30, "cropland": .30, "urban": .20}, .85, 1.1),
    # sand deserts
    Location("Tamanrasset", 22.8, 5.5, {"desert": .60, "bare": .35, "urban": .05}, .35, .6),
    Location("Riyadh", 24.7, 46.7, {"desert": .60, "urban": .30, "bare": .10}, .10, .5),
    Location("Alice Springs", -23.7, 133.9, {"desert": .40, "grassland": .30, "bare": .30}, .30, .6),
    # desert cities and oases
    Location("Dubai", 25.2, 55.3, {"desert": .50, "urban": .30, "water": .20}, .05, .6),
    Location("Phoenix", 33.4, -112.1, {"desert": .40, "urban": .35, "cropland": .25}, .30, .6),
    Location("Cairo", 30.0, 31.2, {"desert": .35, "urban": .35, "cropland": .20, "water": .10}, .05, .5),
    # humid tropics
    Location("Manaus", -3.1, -60.0, {"forest": .70, "water": .25, "urban": .05}, .05, 1.4),
    Location("Jakarta", -6.2, 106.8, {"urban": .40, "forest": .30, "water": .30}, .10, 1.4),
    Location("Lagos", 6.5, 3.4, {"urban": .35, "water": .25, "forest": .25, "cropland": .15}, .05, 1.3),
    # East African lakes, savanna and highlands
    Location("Chifunfu", -2.6, 32.5, {"water": .30, "grassland": .30, "cropland": .30, "forest": .10}, .10, 1.2),
    Location("Nairobi", -1.3, 36.8, {"grassland": .40, "urban": .25, "cropland": .35}, .35, 1.0),
    Location("Addis Ababa", 9.0, 38.7, {"urban": .30, "cropland": .40, "grassland": .20, "bare": .10}, .40, 1.0),
    # temperate and monsoon cropland
    Location("Rotterdam", 51.9, 4.5, {"urban": .30, "cropland": .45, "water": .25}, .00, 1.2),
    Location("Winnipeg", 49.9, -97.1, {"cropland": .70, "water": .10, "urban": .10, "forest": .10}, .00, 1.0),
    Location("Dhaka", 23.8, 90.4, {"cropland": .45, "water": .30, "urban": .25}, .00, 1.3),
    # continental: taiga, steppe, Andes foothills
    Location("Yakutsk", 62.0, 129.7, {"forest": .50, "snow": .30, "water": .20}, .20, 1.0),
    Location("Ulaanbaatar", 47.9, 106.9, {"grassland": .50, "bare": .30, "urban": .20}, .45, .8),
    Location("Santiago", -33.4, -70.6, {"snow": .20, "urban": .30, "cropland": .30, "bare": .20}, .80, .9),
)

#: the locations by name (a chip plan names its location)
LOCATIONS_BY_NAME: Dict[str, Location] = {loc.name: loc for loc in LOCATIONS}
