"""Every Pallas kernel of qrjax, one op per file: kernel body, public wrapper, and `<op>_reference` in plain jnp."""
