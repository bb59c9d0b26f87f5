"""The Python API for notebooks: one call per evaluation, rows ready for a DataFrame.

* :func:`evaluate_resolution` -- a timm model (name or module) at many test sizes; on an ImageFolder path, a
  built-in task, or your own ``Dataset`` / ``DataLoader``. With a model name and a folder / task it runs exactly
  what ``vispos eval resolution`` runs (same rows); with ``variants=`` (training-free PE variants, see
  :data:`vispos.eval.pretrained.VARIANTS`) exactly what ``vispos eval pretrained`` runs.
* :func:`evaluate_frames` -- the video metrics (repetition, NoRepeat, motion, slow-down, ...) of generated videos:
  a folder of files (as ``vispos eval frames --videos``) or a list of arrays / tensors.

Both return :class:`Rows`: a list of flat dicts (``pandas.DataFrame(rows)`` works as is; :meth:`Rows.to_pandas`
when pandas is installed) with the run's metadata in :attr:`Rows.meta`. Nothing is written unless ``out=`` is
given (then the usual results folder, with the output-folder policy of :mod:`vispos.utils.outdir`).
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch

__all__ = ["Rows", "evaluate_resolution", "evaluate_frames"]


class Rows(list):
    """Result rows (one flat dict per cell) with the run's metadata in :attr:`meta` (``table``, ``summary``,
    ``environment``, ``data_config``, ...)."""

    def __init__(self, rows: Iterable[Dict[str, Any]] = (), meta: Optional[Dict[str, Any]] = None):
        super().__init__(rows)
        self.meta: Dict[str, Any] = dict(meta or {})

    def to_pandas(self):
        """A ``pandas.DataFrame`` of the rows (needs pandas: ``pip install 'vispos[notebook]'``)."""
        from .utils.extras import require

        pd = require("pandas", "notebook", "Rows.to_pandas()")
        return pd.DataFrame(list(self))

    def __repr__(self) -> str:
        return f"Rows({len(self)} rows; keys {list(self[0]) if self else []})"


def _sizes_list(sizes) -> Optional[List[Any]]:
    if sizes is None:
        return None
    from .eval.resolution import parse_sizes

    return [list(s) for s in parse_sizes(sizes)]


def evaluate_resolution(model_or_name: Union[str, torch.nn.Module], data, sizes=None, *, pe=None, pe_kwargs=None,
                        variants=None, checkpoint=None, pretrained: bool = False, model_kwargs: Optional[dict] = None,
                        train_size=None, num_classes: Optional[int] = None, class_map=None, mean=None, std=None,
                        crop_pct: Optional[float] = None, interpolation: Optional[str] = None,
                        crop_mode: Optional[str] = None, batch_size: int = 128, num_workers: int = 0,
                        device="auto", amp: bool = False, eval_samples: Optional[int] = None, progress: bool = True,
                        out=None, overwrite: bool = False) -> Rows:
    """Top-1 / top-5 of a model at each test size; one row per (variant, size).

    Args:
        model_or_name: a timm model name (``"vit_small_patch16_224"``) or a timm ViT / EVA module (weights loaded).
        data: an ImageFolder path (read and transformed as timm's validation does, at each size), a built-in task
            name (``"absolute"``, ...; model names only), a ``Dataset`` of ``(PIL image, label)`` (timm's eval
            transform of the model's data config is applied per size) or of ``(tensor, label)``, or a ``DataLoader``
            of ``(images, labels)`` batches (tensors are resized to each size, antialiased ``interpolation``).
        sizes: ``"16,24,32x48"`` / a list (default: ratios of the training size, as the CLI).
        pe / pe_kwargs: model names: vispos PE variants as ``vispos eval resolution --pe`` (``"timm"``, ``"ape"``,
            ``"ape,rope_axial"``); default ``"timm"`` (the model's own PE).
        variants: training-free variants (``"timm,ape-bilinear"``, a list, or ``"all"`` for every variant the model
            admits) -- the ``vispos eval pretrained`` sweep, with a parity check at the training size.
        checkpoint / pretrained: weights for a model name (a file or a run folder; timm's pretrained weights).
        model_kwargs, train_size, num_classes, class_map, mean, std, crop_pct, interpolation, crop_mode, batch_size,
        num_workers, device, amp, eval_samples: as the CLI flags.
        out: write the results folder there too (default: nothing written).

    Returns:
        :class:`Rows` with ``variant, pe, model, seed, size, height, width, n, correct1, top1, correct5, top5,
        checkpoint``; ``rows.meta`` holds the rest of results.json (``table`` included).
    """
    is_name = isinstance(model_or_name, str)
    if not is_name and not isinstance(model_or_name, torch.nn.Module):
        raise TypeError(f"model_or_name must be a timm model name or a torch module, got "
                        f"{type(model_or_name).__name__}")
    if isinstance(variants, str) and variants == "all":
        variants = None
        all_variants = True
    else:
        all_variants = False
    path_like = isinstance(data, (str, Path))
    if is_name and path_like and variants is None and not all_variants:
        return _resolution_cli_path(model_or_name, data, sizes, pe=pe, pe_kwargs=pe_kwargs, checkpoint=checkpoint,
                                    pretrained=pretrained, model_kwargs=model_kwargs, train_size=train_size,
                                    num_classes=num_classes, class_map=class_map, mean=mean, std=std,
                                    crop_pct=crop_pct, interpolation=interpolation, crop_mode=crop_mode,
                                    batch_size=batch_size, num_workers=num_workers, device=device, amp=amp,
                                    eval_samples=eval_samples, progress=progress, out=out, overwrite=overwrite)
    if pe is not None:
        raise ValueError("pe= applies to a model name with an ImageFolder path or a task; for a module or your own "
                         "Dataset / DataLoader use variants= (training-free variants) or install the PE first")
    return _pretrained_path(model_or_name, data, sizes, variants=variants if not all_variants else None,
                            only_model=variants is None and not all_variants, checkpoint=checkpoint,
                            pretrained=pretrained, model_kwargs=model_kwargs, train_size=train_size,
                            num_classes=num_classes, class_map=class_map, mean=mean, std=std, crop_pct=crop_pct,
                            interpolation=interpolation, crop_mode=crop_mode, batch_size=batch_size,
                            num_workers=num_workers, device=device, amp=amp, progress=progress, out=out,
                            overwrite=overwrite)


def _resolution_cli_path(name, data, sizes, *, pe, pe_kwargs, checkpoint, pretrained, model_kwargs, train_size,
                         num_classes, class_map, mean, std, crop_pct, interpolation, crop_mode, batch_size,
                         num_workers, device, amp, eval_samples, progress, out, overwrite) -> Rows:
    """``vispos eval resolution`` itself (:func:`vispos.eval.resolution.run_experiment`)."""
    from .data.images import TASKS
    from .eval.resolution import load_config, run_experiment

    over: Dict[str, Any] = dict(model=name, model_kwargs=model_kwargs or {}, pretrained=bool(pretrained),
                                eval_batch_size=batch_size, num_workers=num_workers, device=device, amp=bool(amp),
                                overwrite=bool(overwrite))
    if str(data) in TASKS and not Path(data).exists():
        over["task"] = str(data)
    else:
        over["data"] = str(data)
    for k, v in dict(sizes=_sizes_list(sizes), pe=pe if pe is not None or checkpoint is not None else "timm",
                     pe_kwargs=pe_kwargs, checkpoint=None if checkpoint is None else str(checkpoint),
                     train_size=train_size, num_classes=num_classes, class_map=class_map, mean=mean, std=std,
                     crop_pct=crop_pct, interpolation=interpolation, crop_mode=crop_mode,
                     eval_samples=eval_samples).items():
        if v is not None:
            over[k] = v
    with tempfile.TemporaryDirectory(prefix="vispos-api-") as tmp:
        over["out"] = str(out) if out is not None else str(Path(tmp) / "results")
        cfg = load_config(None, **over)
        res = run_experiment(cfg, train=False, progress=progress)
    meta = {k: v for k, v in res.items() if k != "rows"}
    if out is None:
        meta.pop("out", None)
    return Rows(res["rows"], meta)


def _dataset_items_are_images(ds) -> bool:
    x = ds[0][0]
    return not isinstance(x, torch.Tensor)


class _Transformed(torch.utils.data.Dataset):
    """A user's dataset of ``(PIL image, label)`` with a per-size transform."""

    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, y = self.ds[i]
        return self.transform(img), y


def _pretrained_path(model, data, sizes, *, variants, only_model, checkpoint, pretrained, model_kwargs, train_size,
                     num_classes, class_map, mean, std, crop_pct, interpolation, crop_mode, batch_size, num_workers,
                     device, amp, progress, out, overwrite) -> Rows:
    """The ``vispos eval pretrained`` sweep on a model (name or module) and any data."""
    from .eval import pretrained as P
    from .eval.timm_data import eval_transform, image_dataset, read_class_map, resolve_eval_config
    from .utils.dist import _resolve_device
    from .utils.env import run_environment

    if sizes is None:
        raise ValueError("give sizes= (e.g. '224,288,384') for a module or your own data")
    if isinstance(model, str):
        if isinstance(data, (str, Path)):
            cfg = dict(model=model, checkpoint=checkpoint, pretrained=pretrained, data=str(data), sizes=sizes,
                       variants=variants, train_size=train_size, model_kwargs=model_kwargs, num_classes=num_classes,
                       class_map=class_map, mean=mean, std=std, crop_pct=crop_pct, interpolation=interpolation,
                       crop_mode=crop_mode, batch_size=batch_size, num_workers=num_workers, device=device, amp=amp)
            res = P.evaluate_pretrained(cfg, progress=progress)
            if out is not None:
                _write(P, out, res, cfg, overwrite)
            return Rows(res["rows"], {k: v for k, v in res.items() if k != "rows"})
        if num_classes is None and checkpoint is None:
            raise ValueError("give num_classes= (or a checkpoint) for a model name with your own data")
        model, _, num_classes = P.load_pretrained(model, checkpoint=checkpoint, pretrained=pretrained,
                                                  num_classes=num_classes, train_size=train_size,
                                                  model_kwargs=model_kwargs)
    elif checkpoint is not None or pretrained:
        raise ValueError("checkpoint= / pretrained= apply to a model name; a module brings its own weights")
    base = model
    nc = num_classes if num_classes is not None else getattr(base, "num_classes", None)
    if not isinstance(nc, int) or nc < 1:
        raise ValueError(f"cannot tell the model's number of classes ({nc!r}); pass num_classes=")
    dc = resolve_eval_config(base, mean=mean, std=std, crop_pct=crop_pct, interpolation=interpolation,
                             crop_mode=crop_mode)
    resize = False
    if isinstance(data, (str, Path)):
        ds = image_dataset(data, class_map=read_class_map(class_map))

        def batches_at(hw):
            d = copy.copy(ds)
            d.transform = eval_transform(dc, hw)
            return torch.utils.data.DataLoader(d, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    elif isinstance(data, torch.utils.data.DataLoader):
        resize = True

        def batches_at(hw):
            return data
    elif isinstance(data, torch.utils.data.Dataset):
        if len(data) == 0:
            raise ValueError("the dataset is empty")
        if _dataset_items_are_images(data):
            def batches_at(hw):
                return torch.utils.data.DataLoader(_Transformed(data, eval_transform(dc, hw)), batch_size=batch_size,
                                                   shuffle=False, num_workers=num_workers)
        else:
            resize = True

            def batches_at(hw):
                return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False,
                                                   num_workers=num_workers)
    else:
        raise TypeError(f"data must be an ImageFolder path, a Dataset or a DataLoader, got {type(data).__name__}")
    dev = _resolve_device(device, 0)
    name = getattr(base, "pretrained_cfg", {}).get("architecture") or type(base).__name__
    res = P.pretrained_sweep(base, batches_at, sizes if not isinstance(sizes, str) else sizes.split(","), nc,
                             variants=["timm"] if only_model else variants, train_size=train_size, device=dev,
                             amp=amp, progress=progress, model_name=name, resize_tensors=resize,
                             interpolation=dc["interpolation"])
    res.update(command="evaluate_resolution", model=name, data=type(data).__name__ if not isinstance(
        data, (str, Path)) else f"ImageFolder {data}", data_config={k: list(v) if isinstance(v, tuple) else v
                                                                  for k, v in dc.items()},
        class_map=read_class_map(class_map), environment=run_environment(dev))
    res["table"] = P.results_table(res)
    if out is not None:
        _write(P, out, res, dict(model=name, sizes=sizes, variants=variants), overwrite)
    return Rows(res["rows"], {k: v for k, v in res.items() if k != "rows"})


def _write(P, out, res, cfg, overwrite) -> None:
    from .utils.outdir import check_out, results_folder

    check_out(out, overwrite=overwrite, owned=P.OWNED)
    with results_folder(out, overwrite=overwrite, owned=P.OWNED) as folder:
        P.write_pretrained_results(folder, res, {k: v for k, v in cfg.items() if v is not None})


def evaluate_frames(videos, *, train_len: int, rope_base: Optional[float] = None, rope_dim: Optional[int] = None,
                    temporal_patch: int = 1, trajectories: bool = False, out=None, overwrite: bool = False,
                    progress: bool = True) -> Rows:
    """The video metrics of generated videos, one row per video (as ``vispos eval frames --videos``).

    Args:
        videos: a folder of video files (exactly ``vispos eval frames --videos DIR``: same rows), or a sequence of
            uint8 ``(T, H, W, 3)`` arrays / tensors, or float ``(C, T, H, W)`` in ``[-1, 1]`` as
            :class:`vispos.models.VideoDiT` samples them (rows get ``file = "video<i>"``).
        train_len: frames the generating model saw in training.
        rope_base / rope_dim / temporal_patch: the generating model's temporal RoPE (NoRepeat's ``N_k`` and
            RIFLEx's ``k`` are then reported, as the CLI).
        trajectories: fit constant-velocity object trajectories (plain-background videos).
        out: write the results folder there too (default: nothing written).

    Returns:
        :class:`Rows` (``file``, ``num_frames``, ``repetition_frame``, ``selfsim_score``, ``norepeat_*``,
        ``motion``, ``slowdown_ratio``, ``tail_novelty``, ...); ``rows.meta["summary"]`` aggregates them.
    """
    from .eval.frames import score_videos_dir

    base = dict(train_len=train_len, rope_base=rope_base, rope_dim=rope_dim, temporal_patch=temporal_patch,
                trajectories=trajectories)
    if isinstance(videos, (str, Path)):
        with tempfile.TemporaryDirectory(prefix="vispos-api-") as tmp:
            cfg = dict(base, videos=str(videos), out=str(out) if out is not None else str(Path(tmp) / "results"))
            if out is not None:
                from .utils.outdir import check_out

                check_out(out, overwrite=overwrite, owned=["results.json", "results.csv", "table.md", "*.png"])
            res = score_videos_dir(cfg, progress=progress)
        return Rows(res["per_video"], {k: v for k, v in res.items() if k != "per_video"})
    if not isinstance(videos, Sequence) or isinstance(videos, (bytes, bytearray)):
        raise TypeError(f"videos must be a folder path or a sequence of (T, H, W, 3) uint8 videos, got "
                        f"{type(videos).__name__}")
    if not videos:
        raise ValueError("videos is empty")
    if out is not None:
        raise ValueError("out= writes a results folder for a folder of video files; for arrays, write them with "
                         "vispos.data.video.write_video first, or save rows.to_pandas()")
    return _score_arrays(videos, base, progress)


def _score_arrays(videos: Sequence, base: Dict[str, Any], progress: bool) -> Rows:
    import numpy as np

    from . import freqs as F_
    from .data.video import check_frames, to_uint8
    from .eval import video_metrics as M
    from .utils.progress import progress_bar

    L, tp = base["train_len"], base["temporal_patch"]
    N_k = None
    if base["rope_dim"] is not None:
        N_k = F_.default_k(float(base["rope_base"]), base["rope_dim"], L / tp)[1] * tp
    rows = []
    bar = progress_bar(total=len(videos), desc="score videos", enabled=progress, unit="video")
    for i, v in enumerate(videos):
        arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        if arr.dtype != np.uint8:
            arr = to_uint8(arr)
        arr = check_frames(arr, f"videos[{i}]")
        rows.append(dict(file=f"video{i}", **M.score_video(arr, L, N_k=N_k, fit_trajectories=base["trajectories"])))
        bar.update(1)
    bar.close()
    return Rows(rows, dict(mode="videos", train_len=L, summary=M.summarize_scores(rows)))
