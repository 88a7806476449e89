"""ComfyUI's core image nodes, rewritten for standalone runs (stub executor, headless runner).

Same node type names, input names, widgets and outputs as ComfyUI 0.3.64's
(``nodes.py``: LoadImage, SaveImage, PreviewImage; ``comfy_extras/nodes_mask.py``:
MaskToImage, ImageToMask), so a workflow runs the same here and in ComfyUI:
IMAGE ``[B,H,W,3]`` float32 0..1, MASK ``[B,H,W]`` float32 0..1 (1 - alpha, or
zeros 64x64 without alpha), files ``{prefix}_{counter:05}_.png`` with the
counter continuing after existing files, PNG text chunks ``prompt`` and one per
``extra_pnginfo`` key (``workflow``). They are registered only with the
standalone executor, never with ComfyUI (which has its own).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, ImageSequence, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from ...unet_core.errors import HostError, InputError
from ...unet_core.file_modes import make_like_new_file
from . import get_host

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _input_dir() -> Path:
    return Path(get_host().input_directory())


def _temp_dir() -> Path:
    return Path(get_host().temp_directory())


def _annotated_path(name: str) -> Path:
    """A LoadImage name (``sub/x.png``, optionally ``x.png [output]``) -> file path, refusing escapes."""
    base = _input_dir()
    for tag, folder in ((" [input]", None), (" [output]", "output"), (" [temp]", "temp")):
        if name.endswith(tag):
            name = name[: -len(tag)]
            if folder == "output":
                base = Path(get_host().output_directory())
            elif folder == "temp":
                base = _temp_dir()
            break
    candidate = Path(name)
    if not name or candidate.is_absolute() or candidate.drive:
        raise HostError(f"LoadImage: {name!r} is not a file name inside the input folder {base}")
    path = (base / candidate).resolve()
    try:
        path.relative_to(base.resolve())
    except ValueError:
        raise HostError(f"LoadImage: {name!r} leads outside the input folder {base}") from None
    return path


def _open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True  # as ComfyUI's node_helpers.pillow: retry tolerating truncation
        try:
            return Image.open(path)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise InputError(f"LoadImage: {path.name} is not a readable image ({error})") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


class LoadImage:
    """Loads an image from the input folder: IMAGE [B,H,W,3], MASK [B,H,W] = 1 - alpha."""

    CATEGORY = "image"
    DESCRIPTION = "Loads an image (all frames of the first frame's size) from the input folder."
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        folder = _input_dir()
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)) \
            if folder.is_dir() else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        picture = _open_image(_annotated_path(image))
        images: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        size = None
        for frame in ImageSequence.Iterator(picture):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode.startswith(("I", "F")) and frame.getextrema()[1] > 255:
                log.warning("LoadImage: %s has more than 8 bits per sample; like ComfyUI's LoadImage this node "
                            "clips it to 8 bits (mostly white). Load it with 'Load Image (scientific)' instead", image)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                continue  # frames of another size are skipped, as ComfyUI does
            images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None])
            if "A" in frame.getbands():
                alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            elif frame.mode == "P" and "transparency" in frame.info:
                alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            masks.append(mask[None])
        if len(images) > 1 and picture.format not in ("MPO",):
            # Frames without alpha give 64x64 masks; frames with alpha give HxW: they only concatenate alike.
            return torch.cat(images, dim=0), torch.cat(masks, dim=0)
        return images[0], masks[0]

    @classmethod
    def IS_CHANGED(cls, image: str) -> str:
        digest = hashlib.sha256()
        with open(_annotated_path(image), "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, image: str) -> bool | str:
        try:
            path = _annotated_path(image)
        except HostError as error:
            return str(error)
        if not path.is_file():
            return f"Invalid image file: {image}"
        return True


def _expand_prefix(prefix: str, width: int, height: int) -> str:
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    for key, value in (("%width%", width), ("%height%", height), ("%year%", now.tm_year),
                       ("%month%", f"{now.tm_mon:02}"), ("%day%", f"{now.tm_mday:02}"), ("%hour%", f"{now.tm_hour:02}"),
                       ("%minute%", f"{now.tm_min:02}"), ("%second%", f"{now.tm_sec:02}")):
        prefix = prefix.replace(key, str(value))
    return prefix


def save_path(prefix: str, output_dir: Path, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """(folder, file name stem, next counter, subfolder) as ComfyUI's folder_paths.get_save_image_path."""
    prefix = _expand_prefix(prefix, width, height)
    normal = os.path.normpath(prefix)
    subfolder, stem = os.path.dirname(normal), os.path.basename(normal)
    root = output_dir.resolve()
    folder = (root / subfolder).resolve()
    if os.path.commonpath((str(root), str(folder))) != str(root):
        raise HostError(f"SaveImage: filename_prefix {prefix!r} leads outside the output folder {root}")
    folder.mkdir(parents=True, exist_ok=True)
    counter = 0
    for name in os.listdir(folder):
        head = name[: len(stem) + 1]
        if os.path.normcase(head[:-1]) != os.path.normcase(stem) or head[-1:] != "_":
            continue
        try:
            number = int(name[len(stem) + 1:].split("_")[0])
        except ValueError:
            number = 0
        counter = max(counter, number)
    return folder, stem, counter + 1, subfolder


def _write_new(path: Path, image: Image.Image, metadata: PngInfo | None, compress_level: int) -> bool:
    """Write a PNG at ``path`` unless a file is there (temp file + hard link: never overwrites); True if written."""
    handle, temp = tempfile.mkstemp(prefix=".tmp_", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        image.save(temp, pnginfo=metadata, compress_level=compress_level)
        make_like_new_file(temp)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: exclusive create, then copy bytes
            try:
                with open(path, "xb") as out, open(temp, "rb") as src:
                    out.write(src.read())
            except FileExistsError:
                return False
        return True
    finally:
        os.unlink(temp)


class SaveImage:
    """Saves images as PNG into the output folder, with the prompt and workflow in text chunks."""

    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to the output directory."
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    folder_type = "output"
    compress_level = 4

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def _folder(self) -> Path:
        return Path(get_host().output_directory())

    def _prefix(self, prefix: str) -> str:
        return prefix

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str = "ComfyUI") -> bool | str:
        """Refuse a prefix that leads outside the output folder before any node runs (nothing created).
        A value that is no string (a malformed link) is left to the input checks, which name it."""
        if not isinstance(filename_prefix, str):
            return True
        prefix = os.path.normpath(_expand_prefix(filename_prefix or "", 0, 0))
        root = Path(get_host().output_directory()).resolve()
        folder = (root / os.path.dirname(prefix)).resolve()
        if os.path.isabs(prefix) or os.path.commonpath((str(root), str(folder))) != str(root):
            return f"SaveImage: filename_prefix {filename_prefix!r} leads outside the output folder {root}"
        return True

    def save_images(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None,
                    extra_pnginfo: Any = None) -> dict[str, Any]:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"{type(self).__name__}: images must be an IMAGE [B,H,W,C] with C 1, 3 or 4; got {shape}")
        folder, stem, counter, subfolder = save_path(self._prefix(filename_prefix), self._folder(),
                                                     int(images.shape[2]), int(images.shape[1]))
        results = []
        for batch_number, image in enumerate(images):
            array = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
            picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            if extra_pnginfo is not None:
                for key in extra_pnginfo:
                    metadata.add_text(key, json.dumps(extra_pnginfo[key]))
            name_stem = stem.replace("%batch_num%", str(batch_number))
            while True:
                file = f"{name_stem}_{counter:05}_.png"
                if _write_new(folder / file, picture, metadata, self.compress_level):
                    break
                counter += 1  # a file of that name appeared meanwhile: never overwrite it
            results.append({"filename": file, "subfolder": subfolder, "type": self.folder_type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    """Saves images into the temp folder (ComfyUI shows them in the node; headless runs list them)."""

    DESCRIPTION = "Saves the input images to the temp directory for preview."
    folder_type = "temp"
    compress_level = 1

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def _folder(self) -> Path:
        return _temp_dir()

    def _prefix(self, prefix: str) -> str:
        return prefix + "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))


class MaskToImage:
    """MASK [B,H,W] -> IMAGE [B,H,W,3] (the mask in every channel)."""

    CATEGORY = "mask"
    DESCRIPTION = "Converts a mask into a grey image."
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "mask_to_image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK",)}}

    def mask_to_image(self, mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3),)


class ImageToMask:
    """IMAGE [B,H,W,C] -> MASK [B,H,W] from one channel."""

    CATEGORY = "mask"
    DESCRIPTION = "Takes one channel of an image as a mask."
    RETURN_TYPES = ("MASK",)
    FUNCTION = "image_to_mask"
    CHANNELS = ("red", "green", "blue", "alpha")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "channel": (list(cls.CHANNELS),)}}

    def image_to_mask(self, image: torch.Tensor, channel: str) -> tuple[torch.Tensor]:
        index = self.CHANNELS.index(channel)
        if image.ndim != 4 or image.shape[-1] <= index:
            raise InputError(f"ImageToMask: the image {tuple(image.shape)} has no {channel} channel "
                             f"(IMAGE is [B,H,W,C]; alpha needs C = 4)")
        return (image[:, :, :, index],)


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "LoadImage": LoadImage,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "MaskToImage": MaskToImage,
    "ImageToMask": ImageToMask,
}
