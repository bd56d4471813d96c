"""A built-in toy dataset: one big flat-coloured shape per image, simple enough to learn in minutes."""

import numpy as np
import torch
from torch.utils.data import Dataset

from ddgan.data.images import from_uint8

SHAPES = ("circle", "square", "triangle", "cross")

# (background, foreground) pairs. One scheme only: with several colours a GAN trained for a few CPU
# minutes spends its modes on colours and blurs the shapes; with one, the shapes come out recognisable.
COLOR_SCHEMES = (
    ((235, 235, 235), (40, 70, 200)),
)

# How far a shape's centre strays from the image's (either way, in image widths) and the range of its radius.
# Wide enough to see at 16 px (centres +-1.6 px, radii 3.8-5.3 px): with +-0.05 and 0.30-0.36 (under a pixel)
# the demo learnt to draw one shape per class (issue #25, BENCHMARKS.md). The largest triangle at the
# furthest centre just fits.
CENTRE_JITTER = 0.10
RADII = (0.24, 0.33)

# ITU-R 601 luma, the weights PIL uses for 'RGB' -> 'L', so grayscale demo images match converted ones.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class DemoShapes(Dataset):
    """Procedural images of one circle, square, triangle or cross, 1/2 to 2/3 of the image wide, on a plain background.

    Deterministic for a seed. An image is drawn when first read and kept (so that 8192 images at 256 px, 1.6 GB,
    cost nothing until used); `images` draws the rest and is the uint8 tensor (N, C, H, W) of all of them.
    Items are float32 tensors (C, H, W) in [-1, 1]; `shapes[i]` names the shape of image i, `labels[i]` is its index
    in SHAPES.
    """

    def __init__(self, image_size: int = 32, num_channels: int = 3, size: int = 8192, seed: int = 0):
        if image_size < 8:
            raise ValueError(f"image_size={image_size}: the demo shapes need at least 8 pixels")
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels={num_channels}: expected 1 (grayscale) or 3 (RGB)")
        if size < 1:
            raise ValueError(f"size={size}: expected at least 1 image")
        self.image_size, self.num_channels, self.seed = image_size, num_channels, seed
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(len(SHAPES), size=size)  # int64
        self._schemes = rng.integers(len(COLOR_SCHEMES), size=size)
        self._centers = 0.5 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, size=(size, 2))
        self._radii = rng.uniform(*RADII, size=size)
        self._images = torch.empty((size, num_channels, image_size, image_size), dtype=torch.uint8)
        self._drawn = np.zeros(size, dtype=bool)
        self.shapes = [SHAPES[k] for k in self.labels]

    def _draw(self, indices: np.ndarray) -> None:
        """Render the images of `indices` not drawn yet, in chunks that bound the temporary float arrays."""
        todo = indices[~self._drawn[indices]]
        for start in range(0, len(todo), 1024):
            chunk = todo[start:start + 1024]
            self._images[chunk] = torch.from_numpy(render_shapes(
                self.labels[chunk], self._schemes[chunk], self._centers[chunk], self._radii[chunk],
                self.image_size, self.num_channels))
            self._drawn[chunk] = True

    @property
    def images(self) -> torch.Tensor:
        """Every image, uint8 (N, C, H, W)."""
        self._draw(np.arange(len(self)))
        return self._images

    def __len__(self) -> int:
        return len(self._images)

    def pixels(self, index: int) -> torch.Tensor:
        """Image `index` as uint8 (C, H, W), drawn if it was not yet."""
        self._draw(np.array([index]))
        return self._images[index]

    def __getitem__(self, index: int) -> torch.Tensor:
        return from_uint8(self.pixels(index))


class DemoSource:
    """The demo's shapes as an image source of ddgan.data.dataset.ImageDataset, labelled by shape (SHAPES order);
    like DemoShapes, an image is drawn when first loaded."""

    flippable = True
    name = "demo"

    def __init__(self, shapes: DemoShapes):
        self.shapes = shapes
        self.labels = shapes.labels
        self.class_names = list(SHAPES)

    def __len__(self) -> int:
        return len(self.shapes)

    def load(self, index: int) -> np.ndarray:
        """Image `index` as a uint8 array (H, W, C)."""
        return self.shapes.pixels(index).permute(1, 2, 0).numpy()

    def describe(self, index: int) -> str:
        return f"demo[{index}]"


def render_shapes(kinds: np.ndarray, schemes: np.ndarray, centers: np.ndarray, radii: np.ndarray,
                  image_size: int, num_channels: int) -> np.ndarray:
    """Draw one antialiased shape per image; returns uint8 (N, C, H, W)."""
    pixel = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    dx = pixel[None, None, :] - centers[:, 0, None, None].astype(np.float32)
    dy = pixel[None, :, None] - centers[:, 1, None, None].astype(np.float32)
    r = radii[:, None, None].astype(np.float32)
    distance = np.select([kinds[:, None, None] == k for k in range(len(SHAPES))],
                         [circle(dx, dy, r), square(dx, dy, r), triangle(dx, dy, r), cross(dx, dy, r)])
    # A signed distance in pixels gives each edge pixel its covered fraction: crisp yet not jagged.
    coverage = np.clip(0.5 - distance * image_size, 0, 1)[:, None]
    palette = np.asarray(COLOR_SCHEMES, dtype=np.float32)[schemes]
    background, foreground = palette[:, 0, :, None, None], palette[:, 1, :, None, None]
    rgb = background + (foreground - background) * coverage
    if num_channels == 1:
        rgb = np.einsum("nchw,c->nhw", rgb, LUMA)[:, None]
    return np.round(rgb).astype(np.uint8)


def box(dx: np.ndarray, dy: np.ndarray, half_width, half_height) -> np.ndarray:
    """Signed distance to an axis-aligned rectangle centred at the origin (exact on and inside its edges)."""
    return np.maximum(np.abs(dx) - half_width, np.abs(dy) - half_height)


def circle(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance to a disc of radius r."""
    return np.hypot(dx, dy) - r


def square(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance to a square of about the disc's area."""
    return box(dx, dy, 0.87 * r, 0.87 * r)


def triangle(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance to an upright equilateral triangle, its bounding box centred like the other shapes."""
    circumradius = 1.4 * r
    # The centroid sits a quarter circumradius below the box centre (image y grows downwards).
    dy = dy - circumradius / 4
    sin30, cos30 = 0.5, np.float32(np.sqrt(3) / 2)
    edges = np.maximum(dy, np.maximum(-cos30 * dx - sin30 * dy, cos30 * dx - sin30 * dy))
    return edges - circumradius / 2


def cross(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance to a plus sign: two crossing bars."""
    return np.minimum(box(dx, dy, 1.05 * r, 0.36 * r), box(dx, dy, 0.36 * r, 1.05 * r))


def shape_geometry(images: np.ndarray) -> np.ndarray:
    """[N, 3] (centre x, centre y, size) of the shape in each uint8 image [N, H, W, C], in image widths.

    The shape is where the image is darker than the background, weighted by how far it is towards the
    foreground colour; size is the square root of its area. For the demo's colours only.
    """
    images = np.asarray(images, dtype=np.float32)
    luma = images[..., 0] if images.shape[-1] == 1 else images @ LUMA
    background, foreground = (float(np.dot(np.asarray(c, dtype=np.float32), LUMA)) for c in COLOR_SCHEMES[0])
    mask = np.clip((background - luma) / (background - foreground), 0, 1)
    size = images.shape[1]
    pixel = (np.arange(size, dtype=np.float32) + 0.5) / size
    area = np.maximum(mask.sum(axis=(1, 2)), 1e-6)
    centre_x = (mask * pixel[None, None, :]).sum(axis=(1, 2)) / area
    centre_y = (mask * pixel[None, :, None]).sum(axis=(1, 2)) / area
    return np.stack([centre_x, centre_y, np.sqrt(area) / size], axis=1)


def within_class_spread(images: np.ndarray, labels: np.ndarray, reference: np.ndarray,
                        reference_labels: np.ndarray) -> dict:
    """Per class, the std of the shapes' centre x, centre y and size in `images` over that in `reference` (the
    data): 1 is the data's variety, 0 every sample alike. Also the mean over classes of each ratio."""
    ours, theirs = shape_geometry(images), shape_geometry(reference)
    ratios = {}
    for label, name in enumerate(SHAPES):
        mine, data = ours[np.asarray(labels) == label], theirs[np.asarray(reference_labels) == label]
        if len(mine) > 1 and len(data) > 1:
            ratios[name] = [round(float(r), 3) for r in mine.std(axis=0) / np.maximum(data.std(axis=0), 1e-9)]
    mean = np.mean(list(ratios.values()), axis=0) if ratios else np.full(3, np.nan)
    return {"per_class": ratios, "centre_x": round(float(mean[0]), 3), "centre_y": round(float(mean[1]), 3),
            "size": round(float(mean[2]), 3)}
