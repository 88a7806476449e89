"""Reading, sniffing, converting and writing diffusion UNet weight files.

Modules (one job each):

* ``safetensors_header`` - ``read_header``: names, dtypes, shapes, offsets, metadata; clear errors
  for empty, truncated, Git LFS pointer, HTML and non-safetensors files.
* ``readers`` - ``load_state_dict``: safetensors (one private memory map, zero copy), diffusers
  folders, pickles through ``torch.load(weights_only=True, mmap=True)`` only.
* ``keymap`` - diffusers <-> LDM renaming for any config (same tensor objects).
* ``infer_config`` - ``UNetConfig`` from LDM or diffusers shapes, or a diffusers config.json.
* ``spec`` / ``sniff`` - ``CheckpointSpec`` from the header alone; ``require_unet``.
* ``loader`` - ``load_unet``: the canonical bare-LDM state dict and its spec.
* ``writer`` - ``save_unet`` (atomic, never overwrites silently, modelspec metadata), ``next_free_path``.
* ``report`` - ``describe``: the readable report the Inspect UNet node shows.
"""
