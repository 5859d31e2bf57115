"""Image sources: natural images bundled inside installed wheels, and users' own folders."""

from qrjax.data.images import (BUNDLED_IMAGES, HELD_OUT, IMAGE_SUFFIXES, ImageFolderSource, InMemorySource,
                               InputScan, bundled_images, bundled_source, image_source, load_image, scan_folder,
                               scan_inputs)

__all__ = ["BUNDLED_IMAGES", "HELD_OUT", "IMAGE_SUFFIXES", "ImageFolderSource", "InMemorySource", "InputScan",
           "bundled_images", "bundled_source", "image_source", "load_image", "scan_folder", "scan_inputs"]
