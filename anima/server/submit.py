"""Turning a request into a queued job: build the recipe, check every limit and name, store the
input images, add the job. Nothing is written before every check has passed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from anima.errors import AnimaError
from anima.imageio import atomic_write
from anima.jobs.grid import parse_axis
from anima.jobs.plan import sheet_plan
from anima.lora.use import split_prompt_loras
from anima.recipe import Recipe, Region, nearest_valid_size, parse_size
from anima.server import a1111, controls, images
from anima.server.a1111_hires import hires_settings
from anima.server.graphs import graph_recipe
from anima.server.jobs import JobSpec, JobStore, QueuedJob, new_job_id
from anima.server.schemas import Img2ImgRequest, JobCreate, Txt2ImgRequest
from anima.server.security import Limits, resolve_inside
from anima.workflows.init_image import file_digest


@dataclass(frozen=True)
class Prepared:
    spec: JobSpec
    notes: list[str]
    init: object | None = None  # PIL image at the recipe size
    mask: object | None = None  # PIL 'L' image at the recipe size
    controls: tuple = ()  # controls.PendingControl, stored with the job by `submit`
    reference: object | None = None  # PIL RGB image (reference editing), as given


class Submitter:
    def __init__(self, store: JobStore, service, limits: Limits, *, inputs_dir: Path, outputs_dir: Path,
                 wake=lambda: None) -> None:  # fmt: skip
        self.store = store
        self.service = service
        self.limits = limits
        self.inputs_dir = Path(inputs_dir)
        self.outputs_dir = Path(outputs_dir)
        self._wake = wake

    # ----------------------------------------------------------------- A1111
    def prepare_txt2img(self, req: Txt2ImgRequest) -> Prepared:

        recipe = a1111.recipe_from_request(req, self.service)
        hires, hires_notes = hires_settings(
            req.model_extra or {},
            recipe.width,
            recipe.height,
            self.service.samplers(),
            self.service.schedulers(),
            tuple(self.service.upscalers()),
        )
        if hires:
            recipe = recipe.with_(**hires)
        self._check(recipe, req.n_iter)
        notes = hires_notes + a1111.ignored_notes(req, img2img=False)
        pending, more = self._a1111_controls(req, recipe)
        return Prepared(JobSpec(recipe, req.n_iter, source="a1111"), notes + more, controls=pending)

    def prepare_img2img(self, req: Img2ImgRequest) -> Prepared:
        notes = a1111.ignored_notes(req, img2img=True)
        first = images.decode_image(req.init_images[0], "init_images[0]", self.limits)
        if len(req.init_images) > 1:
            notes.append(f"only the first of {len(req.init_images)} init_images is used")
        # No size given: the init image's, snapped to the nearest multiple of 8.
        size = (nearest_valid_size(first.width), nearest_valid_size(first.height))
        if req.denoising_strength <= 0:
            raise AnimaError("denoising_strength must be above 0 for img2img")
        recipe = a1111.recipe_from_request(req, self.service, denoise=req.denoising_strength, size=size)
        self._check(recipe, req.n_iter)
        init = images.resize_for(images.to_rgb(first), recipe.width, recipe.height, req.resize_mode)
        mask = None
        if req.mask:
            m = images.decode_image(req.mask, "mask", self.limits)
            blur = req.mask_blur if req.mask_blur is not None else (req.mask_blur_x + req.mask_blur_y) // 2
            mask = images.prepare_mask(
                m, recipe.width, recipe.height, invert=bool(req.inpainting_mask_invert)
            )
            area = "only masked" if req.inpaint_full_res else "whole"
            recipe = recipe.with_(
                mask_blur=blur, inpaint_area=area, inpaint_padding=req.inpaint_full_res_padding
            )
            if req.inpainting_fill != 1:
                notes.append(
                    f"inpainting_fill={req.inpainting_fill} is not supported: "
                    "the original is used under the mask"
                )
        spec = JobSpec(recipe, req.n_iter, init_image="", mask="" if mask else None, source="a1111")
        pending, more = self._a1111_controls(req, recipe)
        return Prepared(spec, notes + more, init, mask, pending)

    def _a1111_controls(self, req, recipe: Recipe) -> tuple[tuple, list[str]]:
        extra = req.model_extra or {}
        pending, notes = controls.a1111(
            extra, self.service, self.limits, recipe.model or None, recipe.width, recipe.height
        )
        return tuple(pending), notes

    # ----------------------------------------------------------------- native
    def prepare_native(self, req: JobCreate) -> Prepared:
        if req.graph is not None:
            return self.prepare_graph(req)
        r = req.recipe
        fields = r.model_dump(exclude_none=True, exclude={"size", "loras", "settings", "grid", "regions"})
        regions = tuple(Region(x.prompt, rect=tuple(x.rect)) for x in r.regions)
        if r.size is not None:
            if r.width is not None or r.height is not None:
                raise AnimaError("give either size or width/height, not both")
            fields["width"], fields["height"] = parse_size(r.size)
        if "seed" not in fields:
            fields["seed"] = secrets.randbits(32)
        if "model" in fields:
            fields["model"] = self.service.check_model(fields["model"])
        settings = r.settings.model_dump(exclude_none=True) if r.settings is not None else {}
        axes = tuple(parse_axis(a) for a in r.grid)
        recipe = Recipe.make(
            fields.pop("prompt"), **fields, **settings, loras=tuple(r.loras), grid=axes, regions=regions
        )
        recipe.validate(self.service.samplers(), self.service.schedulers())
        self._check(recipe, req.n_iter)
        if axes:
            if req.init_image is not None or req.n_iter != 1:
                raise AnimaError("a grid job draws one image per cell: no init image, n_iter 1")
            for cell in sheet_plan(recipe).recipes:  # every cell checked now, before anything is queued
                self._check(cell, 1)
        if req.output_name is not None:
            resolve_inside(self.outputs_dir, req.output_name, "output")
        init = mask = None
        if req.inpaint is not None and req.init_image is None:
            raise AnimaError("inpaint needs init_image")
        if req.init_image is not None:
            im = images.decode_image(req.init_image, "init_image", self.limits)
            init = images.resize_for(images.to_rgb(im), recipe.width, recipe.height)
            if req.inpaint is not None:
                m = images.decode_image(req.inpaint.mask, "inpaint.mask", self.limits)
                mask = images.prepare_mask(m, recipe.width, recipe.height, invert=req.inpaint.invert)
                recipe = recipe.with_(mask_blur=req.inpaint.blur)
        elif recipe.denoise < 1.0:
            raise AnimaError("denoise below 1 needs init_image (img2img)")
        reference = None
        if req.reference_image is not None:
            ref = images.decode_image(req.reference_image, "reference_image", self.limits)
            reference = images.to_rgb(ref)
        spec = JobSpec(
            recipe, req.n_iter, init_image="" if init else None, mask="" if mask else None,
            output_name=req.output_name,
        )  # fmt: skip
        pending = controls.native(req.controls, self.service, self.limits, recipe.model or None)
        return Prepared(spec, [], init, mask, tuple(pending), reference)

    def prepare_graph(self, req: JobCreate) -> Prepared:
        """A ComfyUI graph -> its one output's recipe, with the served model and LoRAs by name."""
        recipe, notes = graph_recipe(req.graph, self.service)
        self._check(recipe, req.n_iter)
        if req.output_name is not None:
            resolve_inside(self.outputs_dir, req.output_name, "output")
        return Prepared(JobSpec(recipe, req.n_iter, output_name=req.output_name), notes)

    # ----------------------------------------------------------------- common
    def _check(self, recipe: Recipe, n_iter: int) -> None:

        self.limits.check_recipe(recipe, n_iter)
        # recipe.loras and <lora:name:w> prompt tags: names inside the LoRA folders only.
        for name, _ in split_prompt_loras(recipe).loras:
            self.service.resolve_lora(name)

    def submit(self, prepared: Prepared) -> QueuedJob:
        """Store inputs and queue the job. Refuses when the queue is full."""
        if self.store.count("queued") >= self.limits.max_queued:
            raise AnimaError(f"the queue is full ({self.limits.max_queued} jobs); try again later")
        job_id = new_job_id()
        spec = prepared.spec
        if not spec.recipe.model:  # pin the model selected now: later option changes do not move it
            spec = _replace(spec, recipe=spec.recipe.with_(model=self.service.current_model()))
        if prepared.init is not None:
            spec = _replace(spec, init_image=self._save_input(job_id, "init", prepared.init))
        if prepared.mask is not None:
            spec = _replace(spec, mask=self._save_input(job_id, "mask", prepared.mask))
        if prepared.reference is not None:
            # The pipeline reads a reference by path and digest, as the recipe records it.
            path = self.inputs_dir / self._save_input(job_id, "reference", prepared.reference)
            ref = {"reference_image": str(path.resolve()), "reference_image_hash": file_digest(path)}
            spec = _replace(spec, recipe=spec.recipe.with_(**ref))
        if prepared.controls:
            units = self._save_controls(job_id, prepared.controls)
            spec = _replace(spec, recipe=spec.recipe.with_(controls=units))
        job = self.store.add(spec, prepared.notes, job_id=job_id)
        self._wake()
        return job

    def _save_controls(self, job_id: str, pending) -> tuple:
        """Store each unit's images; the units record their absolute paths and digests."""
        from anima.workflows.init_image import file_digest

        units = []
        for i, p in enumerate(pending):
            changes = {}
            for what, im in (("image", p.image), ("mask", p.mask)):
                if im is not None:
                    path = (self.inputs_dir / self._save_input(job_id, f"control{i}-{what}", im)).resolve()
                    changes |= {what: str(path), f"{what}_hash": file_digest(path)}
            units.append(p.unit.with_(**changes))
        return tuple(units)

    def _save_input(self, job_id: str, what: str, image) -> str:

        name = f"{job_id}-{what}.png"
        atomic_write(self.inputs_dir / name, lambda fh: image.save(fh, format="PNG", compress_level=1))
        return name


def stored_inputs(spec: JobSpec, inputs_dir: Path) -> dict[str, Path]:
    """The input images stored with a job, by role (``init``, ``mask``, ``reference``,
    ``control{i}-image``, ``control{i}-mask``: the ``{job_id}-{role}.png`` files `submit` wrote).
    Files outside the inputs folder (a recipe re-run from a PNG names the user's own) are not its."""
    base = Path(inputs_dir).resolve()
    found: dict[str, str | None] = {"init": spec.init_image, "mask": spec.mask,
                                    "reference": spec.recipe.reference.image or None}  # fmt: skip
    for i, unit in enumerate(spec.recipe.controls):
        found |= {f"control{i}-image": unit.image or None, f"control{i}-mask": unit.mask or None}
    out = {}
    for role, name in found.items():
        path = (base / name).resolve() if name else None  # relative names are the folder's; absolute stay
        if path is not None and path.parent == base:
            out[role] = path
    return out


def _replace(spec: JobSpec, **changes) -> JobSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)
