"""The stub graph executor: ComfyUI workflow formats, validation and execution."""
