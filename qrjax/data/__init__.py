"""Image sources: natural images bundled inside installed wheels, and users' own folders."""

from qrjax.data.images import (BUNDLED_IMAGES, HELD_OUT, ImageFolderSource, InMemorySource, bundled_images,
                               bundled_source, image_source, load_image)

__all__ = ["BUNDLED_IMAGES", "HELD_OUT", "ImageFolderSource", "InMemorySource", "bundled_images", "bundled_source",
           "image_source", "load_image"]
