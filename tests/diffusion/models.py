"""Small models the diffusion tests share."""

import jax
import numpy as np

from qrjax.clip.data import SyntheticScenes
from qrjax.diffusion.autoencoder import fit_pca
from qrjax.diffusion.config import get_config
from qrjax.diffusion.model import DiffusionModel, init_params


def random_t2i_model(scale: float = 0.05, seed: int = 0, clip=None) -> DiffusionModel:
    """The t2i-tiny architecture with perturbed weights (adaLN-zero layers output exactly zero at init, hiding the
    rest of the network) and a PCA autoencoder fitted on 32 synthetic scenes; its config names the shipped CLIP
    'cpu' (`clip` attaches a loaded one; saving and loading the model attaches it too)."""
    config = get_config("t2i-tiny")
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape).astype(np.float32),
                          init_params(config, jax.random.key(0)))
    ae = fit_pca(SyntheticScenes(32, config.image_size).images(np.arange(32)), config.ae_factor, config.channels)
    return DiffusionModel(config, params, ae, (), clip)
