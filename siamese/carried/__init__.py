"""Files every model folder carries so that diffusers loads it without this package.

`pipeline_siamese.py` (copied to the folder's root) and `patch_codec.py` (copied to `codec/`) import only torch,
numpy, PIL, safetensors, diffusers and transformers; `siamese/networks.py` is copied as-is to
`controlnet/siamese_networks.py` (it imports only torch and diffusers). `siamese.pipeline` writes them and the
folder's `model_index.json`; nothing here is imported by the library at run time except by tests.
"""
