"""Reading, sniffing, converting and writing diffusion UNet weight files."""
