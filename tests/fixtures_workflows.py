"""What the real ComfyUI frontend (ComfyUI 0.3.64, ComfyUI_frontend 1.27.10, headless Chromium) made of the
shipped workflows: ``app.loadGraphData(workflow)`` then ``app.graphToPrompt()["output"]``, recorded once.

An independent reference for our UI -> API conversion of these files (tests/test_workflows_frontend.py).
Recorded from the workflow files as ``scripts/make_workflows.py`` writes them; re-record when they change.
"""

FRONTEND_VERSION = "1.27.10"

FRONTEND_PROMPTS = {
 "unet_lab_lora_block_weights_sdxl": {
  "10": {
   "_meta": {
    "title": "LoRA report"
   },
   "class_type": "PreviewAny",
   "inputs": {
    "preview": "",
    "source": [
     "3",
     1
    ]
   }
  },
  "2": {
   "_meta": {
    "title": "Load Checkpoint"
   },
   "class_type": "CheckpointLoaderSimple",
   "inputs": {
    "ckpt_name": "sd_xl_base_1.0.safetensors"
   }
  },
  "3": {
   "_meta": {
    "title": "Apply LoRA (block weights)"
   },
   "class_type": "UNetLabApplyLoRABlockWeights",
   "inputs": {
    "block_spec": "default=1, IN=0.5, M00=1, OUT00-02=0.8, OUT03-05=1, OUT06-08=0.6",
    "lora_name": "sdxl_style_lora.safetensors",
    "model": [
     "2",
     0
    ],
    "preset": "none (use block spec)",
    "strength": 1
   }
  },
  "4": {
   "_meta": {
    "title": "Positive"
   },
   "class_type": "CLIPTextEncode",
   "inputs": {
    "clip": [
     "2",
     1
    ],
    "text": "a cozy reading nook, warm light, detailed"
   }
  },
  "5": {
   "_meta": {
    "title": "Negative"
   },
   "class_type": "CLIPTextEncode",
   "inputs": {
    "clip": [
     "2",
     1
    ],
    "text": "blurry, low quality, watermark"
   }
  },
  "6": {
   "_meta": {
    "title": "Empty Latent Image"
   },
   "class_type": "EmptyLatentImage",
   "inputs": {
    "batch_size": 1,
    "height": 1024,
    "width": 1024
   }
  },
  "7": {
   "_meta": {
    "title": "KSampler"
   },
   "class_type": "KSampler",
   "inputs": {
    "cfg": 7,
    "denoise": 1,
    "latent_image": [
     "6",
     0
    ],
    "model": [
     "3",
     0
    ],
    "negative": [
     "5",
     0
    ],
    "positive": [
     "4",
     0
    ],
    "sampler_name": "euler_ancestral",
    "scheduler": "normal",
    "seed": 0,
    "steps": 25
   }
  },
  "8": {
   "_meta": {
    "title": "VAE Decode"
   },
   "class_type": "VAEDecode",
   "inputs": {
    "samples": [
     "7",
     0
    ],
    "vae": [
     "2",
     2
    ]
   }
  },
  "9": {
   "_meta": {
    "title": "Save Image"
   },
   "class_type": "SaveImage",
   "inputs": {
    "filename_prefix": "unet_lab/lora_block_weights_sdxl",
    "images": [
     "8",
     0
    ]
   }
  }
 },
 "unet_lab_sdxl_turbo_one_step": {
  "10": {
   "_meta": {
    "title": "SamplerCustom"
   },
   "class_type": "SamplerCustom",
   "inputs": {
    "add_noise": True,
    "cfg": 1,
    "latent_image": [
     "9",
     0
    ],
    "model": [
     "2",
     0
    ],
    "negative": [
     "6",
     0
    ],
    "noise_seed": 0,
    "positive": [
     "5",
     0
    ],
    "sampler": [
     "8",
     0
    ],
    "sigmas": [
     "7",
     0
    ]
   }
  },
  "11": {
   "_meta": {
    "title": "VAE Decode"
   },
   "class_type": "VAEDecode",
   "inputs": {
    "samples": [
     "10",
     0
    ],
    "vae": [
     "4",
     0
    ]
   }
  },
  "12": {
   "_meta": {
    "title": "Save Image"
   },
   "class_type": "SaveImage",
   "inputs": {
    "filename_prefix": "unet_lab/sdxl_turbo",
    "images": [
     "11",
     0
    ]
   }
  },
  "13": {
   "_meta": {
    "title": "UNet file info"
   },
   "class_type": "PreviewAny",
   "inputs": {
    "preview": "",
    "source": [
     "2",
     1
    ]
   }
  },
  "2": {
   "_meta": {
    "title": "Load UNet"
   },
   "class_type": "UNetLabLoadUNet",
   "inputs": {
    "prediction": "auto",
    "unet_name": "sdxl_turbo_unet.safetensors",
    "weight_dtype": "default"
   }
  },
  "3": {
   "_meta": {
    "title": "DualCLIPLoader"
   },
   "class_type": "DualCLIPLoader",
   "inputs": {
    "clip_name1": "clip_l.safetensors",
    "clip_name2": "clip_g.safetensors",
    "device": "default",
    "type": "sdxl"
   }
  },
  "4": {
   "_meta": {
    "title": "Load VAE"
   },
   "class_type": "VAELoader",
   "inputs": {
    "vae_name": "sdxl_vae.safetensors"
   }
  },
  "5": {
   "_meta": {
    "title": "Positive"
   },
   "class_type": "CLIPTextEncode",
   "inputs": {
    "clip": [
     "3",
     0
    ],
    "text": "a watercolor fox in a snowy birch forest, soft light"
   }
  },
  "6": {
   "_meta": {
    "title": "Negative (unused at cfg 1)"
   },
   "class_type": "CLIPTextEncode",
   "inputs": {
    "clip": [
     "3",
     0
    ],
    "text": ""
   }
  },
  "7": {
   "_meta": {
    "title": "SDTurboScheduler"
   },
   "class_type": "SDTurboScheduler",
   "inputs": {
    "denoise": 1,
    "model": [
     "2",
     0
    ],
    "steps": 1
   }
  },
  "8": {
   "_meta": {
    "title": "KSamplerSelect"
   },
   "class_type": "KSamplerSelect",
   "inputs": {
    "sampler_name": "euler_ancestral"
   }
  },
  "9": {
   "_meta": {
    "title": "Empty Latent Image"
   },
   "class_type": "EmptyLatentImage",
   "inputs": {
    "batch_size": 1,
    "height": 512,
    "width": 512
   }
  }
 },
 "unet_lab_segment_image": {
  "2": {
   "_meta": {
    "title": "Load Image"
   },
   "class_type": "LoadImage",
   "inputs": {
    "image": "cells.png"
   }
  },
  "3": {
   "_meta": {
    "title": "Load Segmentation U-Net"
   },
   "class_type": "UNetLabLoadSegmentationUNet",
   "inputs": {
    "base_channels": 16,
    "classes": 1,
    "depth": 3,
    "model_name": "my_segmentation_unet.safetensors",
    "seed": 0
   }
  },
  "4": {
   "_meta": {
    "title": "Segment Image"
   },
   "class_type": "UNetLabSegmentImage",
   "inputs": {
    "blend": "gaussian",
    "class_mode": "foreground",
    "flip_tta": False,
    "image": [
     "2",
     0
    ],
    "overlap": 0.25,
    "seg_unet": [
     "3",
     0
    ],
    # "speed" added by hand with the new optional widget (not yet re-recorded): the frontend sends
    # every widget value of a node, optional widgets included
    "speed": "auto",
    "threshold": -1,
    "tile_size": 512
   }
  },
  "5": {
   "_meta": {
    "title": "Convert Mask to Image"
   },
   "class_type": "MaskToImage",
   "inputs": {
    "mask": [
     "4",
     0
    ]
   }
  },
  "6": {
   "_meta": {
    "title": "Save mask"
   },
   "class_type": "SaveImage",
   "inputs": {
    "filename_prefix": "unet_lab/segment_mask",
    "images": [
     "5",
     0
    ]
   }
  },
  "7": {
   "_meta": {
    "title": "Save overlay"
   },
   "class_type": "SaveImage",
   "inputs": {
    "filename_prefix": "unet_lab/segment_overlay",
    "images": [
     "4",
     2
    ]
   }
  }
 },
 "unet_lab_skip_attention_gates": {
  "10": {
   "_meta": {
    "title": "Save Image"
   },
   "class_type": "SaveImage",
   "inputs": {
    "filename_prefix": "unet_lab/skip_attention_gates",
    "images": [
     "9",
     0
    ]
   }
  },
  "11": {
   "_meta": {
    "title": "Skip Gate Maps"
   },
   "class_type": "UNetLabSkipGateMaps",
   "inputs": {
    "combine": "mean",
    "gate_maps": [
     "3",
     1
    ],
    "levels": "all",
    "passes": "cond",
    "samples": [
     "8",
     0
    ],
    "size": "image"
   }
  },
  "12": {
   "_meta": {
    "title": "Convert Mask to Image"
   },
   "class_type": "MaskToImage",
   "inputs": {
    "mask": [
     "11",
     0
    ]
   }
  },
  "13": {
   "_meta": {
    "title": "Gate maps"
   },
   "class_type": "PreviewImage",
   "inputs": {
    "images": [
     "12",
     0
    ]
   }
  },
  "14": {
   "_meta": {
    "title": "Gate report"
   },
   "class_type": "PreviewAny",
   "inputs": {
    "preview": "",
    "source": [
     "3",
     2
    ]
   }
  },
  "2": {
   "_meta": {
    "title": "Load Checkpoint"
   },
   "class_type": "CheckpointLoaderSimple",
   "inputs": {
    "ckpt_name": "v1-5-pruned-emaonly.safetensors"
   }
  },
  "3": {
   "_meta": {
    "title": "UNet Skip Attention Gate"
   },
   "class_type": "UNetLabSkipAttentionGate",
   "inputs": {
    "apply_to": "both",
    "floor": 0,
    "gate_weights": "none (parameter-free)",
    "level_strengths": "",
    "levels": "all",
    "model": [
     "2",
     0
    ],
    "record_maps": True,
    "sharpness": 1,
    "strength": 0.5
   }
  },
  "4": {
   "_meta": {
    "title": "FreeU_V2"
   },
   "class_type": "FreeU_V2",
   "inputs": {
    "b1": 1.5,
    "b2": 1.6,
    "model": [
     "3",
     0
    ],
    "s1": 0.9,
    "s2": 0.2
   }
  },
  "5": {
   "_meta": {
    "title": "Positive"
   },
   "class_type": "CLIPTextEncode",
   "inputs": {
    "clip": [
     "2",
     1
    ],
    "text": "a red bicycle leaning on a brick wall, photo"
   }
  },
  "6": {
   "_meta": {
    "title": "Negative"
   },
   "class_type": "CLIPTextEncode",
   "inputs": {
    "clip": [
     "2",
     1
    ],
    "text": "blurry, low quality, watermark"
   }
  },
  "7": {
   "_meta": {
    "title": "Empty Latent Image"
   },
   "class_type": "EmptyLatentImage",
   "inputs": {
    "batch_size": 1,
    "height": 512,
    "width": 512
   }
  },
  "8": {
   "_meta": {
    "title": "KSampler"
   },
   "class_type": "KSampler",
   "inputs": {
    "cfg": 7,
    "denoise": 1,
    "latent_image": [
     "7",
     0
    ],
    "model": [
     "4",
     0
    ],
    "negative": [
     "6",
     0
    ],
    "positive": [
     "5",
     0
    ],
    "sampler_name": "euler",
    "scheduler": "normal",
    "seed": 0,
    "steps": 20
   }
  },
  "9": {
   "_meta": {
    "title": "VAE Decode"
   },
   "class_type": "VAEDecode",
   "inputs": {
    "samples": [
     "8",
     0
    ],
    "vae": [
     "2",
     2
    ]
   }
  }
 },
 "unet_lab_swap_unet_sd15": {
  "10": {
   "_meta": {
    "title": "Save Image"
   },
   "class_type": "SaveImage",
   "inputs": {
    "filename_prefix": "unet_lab/swap_unet_sd15",
    "images": [
     "9",
     0
    ]
   }
  },
  "11": {
   "_meta": {
    "title": "Swap notes"
   },
   "class_type": "PreviewAny",
   "inputs": {
    "preview": "",
    "source": [
     "3",
     1
    ]
   }
  },
  "2": {
   "_meta": {
    "title": "Load Checkpoint"
   },
   "class_type": "CheckpointLoaderSimple",
   "inputs": {
    "ckpt_name": "v1-5-pruned-emaonly.safetensors"
   }
  },
  "3": {
   "_meta": {
    "title": "Swap UNet"
   },
   "class_type": "UNetLabSwapUNet",
   "inputs": {
    "model": [
     "2",
     0
    ],
    "unet_name": "sd15_finetuned_unet.safetensors"
   }
  },
  "4": {
   "_meta": {
    "title": "Inspect UNet"
   },
   "class_type": "UNetLabInspectUNet",
   "inputs": {
    "file": "diffusion_models/sd15_finetuned_unet.safetensors"
   }
  },
  "5": {
   "_meta": {
    "title": "Positive"
   },
   "class_type": "CLIPTextEncode",
   "inputs": {
    "clip": [
     "2",
     1
    ],
    "text": "a lighthouse on a cliff at dusk, oil painting"
   }
  },
  "6": {
   "_meta": {
    "title": "Negative"
   },
   "class_type": "CLIPTextEncode",
   "inputs": {
    "clip": [
     "2",
     1
    ],
    "text": "blurry, low quality, watermark"
   }
  },
  "7": {
   "_meta": {
    "title": "Empty Latent Image"
   },
   "class_type": "EmptyLatentImage",
   "inputs": {
    "batch_size": 1,
    "height": 512,
    "width": 512
   }
  },
  "8": {
   "_meta": {
    "title": "KSampler"
   },
   "class_type": "KSampler",
   "inputs": {
    "cfg": 7,
    "denoise": 1,
    "latent_image": [
     "7",
     0
    ],
    "model": [
     "3",
     0
    ],
    "negative": [
     "6",
     0
    ],
    "positive": [
     "5",
     0
    ],
    "sampler_name": "euler",
    "scheduler": "normal",
    "seed": 0,
    "steps": 20
   }
  },
  "9": {
   "_meta": {
    "title": "VAE Decode"
   },
   "class_type": "VAEDecode",
   "inputs": {
    "samples": [
     "8",
     0
    ],
    "vae": [
     "2",
     2
    ]
   }
  }
 },
 "unet_lab_train_segmentation_pairs": {
  "2": {
   "_meta": {
    "title": "Load Segmentation U-Net"
   },
   "class_type": "UNetLabLoadSegmentationUNet",
   "inputs": {
    "base_channels": 16,
    "classes": 1,
    "depth": 3,
    "model_name": "(new) unet",
    "seed": 0
   }
  },
  "3": {
   "_meta": {
    "title": "Train Segmentation U-Net"
   },
   "class_type": "UNetLabTrainSegmentationUNet",
   "inputs": {
    "augmentation": "flips+rotations+brightness",
    "batch_size": 8,
    "border_weights": False,
    "filename_prefix": "unet_lab/pairs_segmentation",
    "folder": "my_pairs",
    "learning_rate": 0.003,
    "loss": "ce+dice",
    "schedule": "cosine",
    "seed": 0,
    "seg_unet": [
     "2",
     0
    ],
    "steps": 300,
    "validation_fraction": 0.2
   }
  },
  "4": {
   "_meta": {
    "title": "Load Image"
   },
   "class_type": "LoadImage",
   "inputs": {
    "image": "cells.png"
   }
  },
  "5": {
   "_meta": {
    "title": "Segment Image"
   },
   "class_type": "UNetLabSegmentImage",
   "inputs": {
    "blend": "gaussian",
    "class_mode": "foreground",
    "flip_tta": False,
    "image": [
     "4",
     0
    ],
    "overlap": 0.25,
    "seg_unet": [
     "3",
     0
    ],
    # "speed" added by hand with the new optional widget (not yet re-recorded): the frontend sends
    # every widget value of a node, optional widgets included
    "speed": "auto",
    "threshold": -1,
    "tile_size": 512
   }
  },
  "6": {
   "_meta": {
    "title": "Convert Mask to Image"
   },
   "class_type": "MaskToImage",
   "inputs": {
    "mask": [
     "5",
     0
    ]
   }
  },
  "7": {
   "_meta": {
    "title": "Save mask"
   },
   "class_type": "SaveImage",
   "inputs": {
    "filename_prefix": "unet_lab/pairs_mask",
    "images": [
     "6",
     0
    ]
   }
  },
  "8": {
   "_meta": {
    "title": "Save overlay"
   },
   "class_type": "SaveImage",
   "inputs": {
    "filename_prefix": "unet_lab/pairs_overlay",
    "images": [
     "5",
     2
    ]
   }
  }
 }
}
