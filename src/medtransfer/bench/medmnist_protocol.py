"""The MedMNIST v2 benchmark protocol (Yang et al., Scientific Data 10:41, 2023) as medtransfer experiments.

``protocol_config`` turns (datasets, architecture, variant, seeds) into an ordinary ``ExperimentConfig`` - results
store, resumable, ``medtransfer report`` works on its folder - whose settings are the reference training loop's
(MedMNIST/experiments ``train_and_eval_pytorch.py``, 2D and 3D). ``comparison`` puts the stored test AUC/ACC, mean
± std over seeds, beside the paper's table (``report.medmnist_v2_published``), and ``REFERENCE_DETAILS`` says
which details of the reference loop are followed and which differ, and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from medmnist import INFO

from medtransfer.config import ExperimentConfig
from medtransfer.errors import ConfigError, allowed
from medtransfer.report.medmnist_v2_published import CITATION, model_label, published

ARCHS = ("resnet18", "resnet50")
VARIANTS = ("28", "224")  # 2D: native 28 px with the small stem, or 28 px upsampled to 224 with the standard stem
VOLUME_SIZES = (28, 64)  # 3D: the 28^3 files of the paper, or MedMNIST+'s 64^3
BATCH_2D, BATCH_3D = 128, 32  # the reference scripts' defaults


def is_3d(dataset: str) -> bool:
    """medmnist's own classification of a flag (its dataset class ends in "3D")."""
    if dataset not in INFO:
        raise ConfigError(f"datasets: {dataset!r} is not a MedMNIST dataset; allowed: {allowed(INFO)}")
    return INFO[dataset]["python_class"].endswith("3D")


def protocol_config(datasets: list[str], root: str | Path, arch: str = "resnet18", variant: str = "28",
                    seeds: Sequence[int] = (0, 1, 2), epochs: int = 100, volume_size: int = 28, device: str = "auto",
                    backbone: str | None = None) -> ExperimentConfig:
    """One experiment: every dataset (all 2D or all 3D) x every seed, random init, end-to-end, all labels.

    2D "(28)": ``arch`` with the 3x3 stride-1 stem and no max-pool on 28 px; "(224)": the standard stem on the
    28 px images upsampled to 224 by pixel replication (nearest). 3D: ``arch`` with 3D convolutions and the same
    small stem on 28^3 (or 64^3) volumes, batch 32. Schedule (both): Adam 1e-3, ``epochs`` (100 in the paper), lr
    x0.1 at 50 % and 75 %, no augmentation, the epoch with the best validation AUC tested once; float32, as the
    reference. ``backbone`` replaces the architecture (tests use tiny ones); everything else stays the protocol's.
    """
    if arch not in ARCHS:
        raise ConfigError(f"arch: {arch!r}; allowed: {allowed(ARCHS)}")
    dims = {is_3d(d) for d in datasets}
    if len(dims) != 1:
        raise ConfigError(f"datasets: {datasets} mix 2D and 3D; allowed: all 2D or all 3D in one experiment")
    three_d = dims.pop()
    if not three_d and variant not in VARIANTS:
        raise ConfigError(f"variant: {variant!r}; allowed: {allowed(VARIANTS)}")
    if three_d and volume_size not in VOLUME_SIZES:
        raise ConfigError(f"volume_size: {volume_size!r}; allowed: {allowed(VOLUME_SIZES)}")
    variant = "3d" if three_d else variant
    size = volume_size if three_d else 28
    entries = [{"name": d, "root": str(Path(root).expanduser().resolve()), "size": size,
                **({"resize": 224, "resize_mode": "nearest"} if variant == "224" else {})} for d in datasets]
    return ExperimentConfig.model_validate({
        "name": f"medmnist-v2-{backbone or arch}-{variant}{f'-{size}' if three_d and size != 28 else ''}-{epochs}ep",
        "datasets": entries,
        "backbone": {"name": backbone or (f"{arch}_3d" if three_d else arch), "small_stem": variant != "224"},
        "inits": ["random"], "strategies": ["end_to_end"], "label_fractions": [1.0], "seeds": list(seeds),
        "train": {"epochs": epochs, "batch_size": BATCH_3D if three_d else BATCH_2D},  # the rest: TrainConfig's
        "hardware": {"accelerator": device, "precision": "32-true"},                # defaults = the protocol
    })


def run_model(config: dict) -> tuple[str, str, int]:
    """(dataset flag, row name, epochs) of a stored run, read from its resolved config.

    Only the paper's settings get the paper's row names: 28 px (28^3) files, and for "(224)" those upsampled by
    pixel replication with the standard stem. Any other input (MedMNIST+'s 64^3 or larger 2D files, another resize)
    is named by its own size, so it is neither compared with the paper's cell nor averaged with its runs.
    """
    backbone, dataset = config["backbone"], config["dataset"]
    name, small = backbone["name"], backbone["small_stem"]
    size, resize = int(dataset.get("options", {}).get("size", 28)), dataset.get("resize")
    arch = name.removesuffix("_3d")
    if name.endswith("_3d"):
        resized = f" resized to {resize}³" if resize else ""
        variant, setting = "3d", "" if size == 28 and resize is None else f" ({size}³{resized})"
    elif size == 28 and resize is None and small:
        variant, setting = "28", ""
    elif size == 28 and resize == 224 and dataset.get("resize_mode") == "nearest" and not small:
        variant, setting = "224", ""
    else:
        pixels = f"{size} px" + (f" resized to {resize} ({dataset.get('resize_mode', 'linear')})" if resize else "")
        variant, setting = f"{pixels}, {'small' if small else 'standard'} stem", ""
    label = model_label(arch, variant) if arch in ARCHS and variant in ("28", "224", "3d") else f"{name} ({variant})"
    return dataset["name"], label + setting, int(config["train"]["epochs"])


def comparison(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, epochs): n seeds, test AUC/ACC mean and std, the paper's values and the differences.

    ``rows`` are ``ResultStore.rows()`` (finished runs). ``paper_verified`` is False for cells not checked against
    a second copy of the table; a model or dataset the paper does not report has NaN published values.
    """
    records = []
    keys = rows["config"].map(run_model)
    for (dataset, model, epochs), group in rows.groupby(keys):
        paper = published(dataset, model)
        record = {"dataset": dataset, "model": model, "epochs": epochs, "n": len(group),
                  "seeds": sorted(int(s) for s in group["seed"])}
        for metric in ("auc", "acc"):
            values = group[f"metric.{metric}"].astype(float)
            ours = values.mean()
            theirs = getattr(paper, metric) if paper is not None else None
            record.update({f"{metric}_mean": ours, f"{metric}_std": values.std(ddof=1),
                           f"{metric}_paper": float("nan") if theirs is None else theirs,
                           f"{metric}_diff": float("nan") if theirs is None else ours - theirs})
        record["paper_verified"] = paper.verified if paper is not None else None
        fit_s = group["timings"].map(lambda t: t.get("fit_s", 0.0))
        epochs_run = group["extra"].map(lambda e: max(int(e.get("epochs_run", epochs)), 1))
        record["fit_min_per_seed"] = fit_s.mean() / 60
        record["s_per_epoch"] = (fit_s / epochs_run).mean()  # training + validation of one epoch
        record["best_epochs"] = [int(e["best_epoch"]) for e in group["extra"]]
        records.append(record)
    return pd.DataFrame(records)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f}" + ("" if pd.isna(std) else f" ± {std:.3f}")


def _paper(value: float, verified: bool | None) -> str:
    return "—" if pd.isna(value) else f"{value:.3f}{'' if verified else ' †'}"


def _diff(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:+.3f}"


def format_comparison(table: pd.DataFrame) -> str:
    """Markdown table of ``comparison`` with the citation and the dagger's meaning underneath."""
    lines = ["| dataset | model | epochs | seeds | test AUC (medtransfer) | AUC (paper) | Δ AUC "
             "| test ACC (medtransfer) | ACC (paper) | Δ ACC | best epochs | fit min/seed (s/epoch) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        shortened = "" if r.epochs == 100 else " (short)"
        lines.append(f"| {r.dataset} | {r.model} | {r.epochs}{shortened} | {r.n} | {_pm(r.auc_mean, r.auc_std)} "
                     f"| {_paper(r.auc_paper, r.paper_verified)} | {_diff(r.auc_diff)} "
                     f"| {_pm(r.acc_mean, r.acc_std)} | {_paper(r.acc_paper, r.paper_verified)} | {_diff(r.acc_diff)} "
                     f"| {', '.join(map(str, r.best_epochs))} | {r.fit_min_per_seed:.1f} ({r.s_per_epoch:.0f}) |")
    short = (table["epochs"] != 100).any()
    return "\n".join(lines) + (f"\n\nPaper: {CITATION}. † = cell not checked against a second copy of the table; "
                               "— = not reported (or not transcribed). Δ = medtransfer mean − paper; the paper "
                               "reports one run per cell, medtransfer mean ± std (ddof 1) over the seeds listed."
                               + (" (short) = a shortened schedule, not comparable with the paper's 100 epochs."
                                  if short else ""))


@dataclass(frozen=True)
class Detail:
    topic: str
    reference: str  # what MedMNIST/experiments' train_and_eval_pytorch.py does
    medtransfer: str
    follows: bool
    why: str = ""  # for a deviation: why it is left, and what it does


REFERENCE_DETAILS = (
    Detail("optimiser", "Adam, lr 1e-3, no weight decay", "the same (TrainConfig defaults)", True),
    Detail("schedule", "lr x0.1 after 50 % and 75 % of the epochs (MultiStepLR, stepped per epoch)",
           "the same; milestones are fractions of train.epochs", True),
    Detail("batches", "2D 128, 3D 32; shuffled; the last partial batch kept (drop_last=False)",
           "the same: every training image once per epoch", True,
           "a trailing batch of exactly one image joins the previous batch, so BatchNorm never trains on one "
           "value per channel; PneumoniaMNIST and AdrenalMNIST3D never have one"),
    Detail("loss", "cross-entropy (BCE with logits for multi-label)", "the same", True),
    Detail("2D input", "ToTensor ([0, 1]), then mean 0.5 / std 0.5", "the same", True),
    Detail("augmentation", "none", "none (train.augment: none)", True),
    Detail("(28) network", "CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool", "timm ResNet, the same stem", True),
    Detail("selection", "the epoch with the best validation AUC (strictly better; first wins ties)",
           "the same (ModelCheckpoint on val/auc, mode max)", True),
    Detail("test", "scored on the selected weights (the script also logs test every epoch, never used)",
           "scored once, on the selected weights", True),
    Detail("metrics", "medmnist.Evaluator: AUC (binary: class-1 score; else mean one-vs-rest), ACC (argmax; "
           "0.5 per label for multi-label)", "the same definitions (evaluate.metrics)", True),
    Detail("precision", "float32", "float32 (hardware.precision: 32-true), also on a GPU", True),
    Detail("seeds", "one run per cell, unseeded", "seeded, deterministic; mean ± std over the seeds", False,
           "small sets vary a lot between runs, so one unseeded run cannot be compared honestly"),
    Detail("weight init", "PyTorch defaults (28); torchvision's ResNet init (224)",
           "timm's ResNet init (Kaiming-normal fan-out, last BatchNorm of each block zero-initialised; the small "
           "stem's conv: PyTorch's default)", False,
           "timm's default for every medtransfer ResNet; not yet measured against PyTorch's defaults"),
    Detail("(224) resize", "PIL NEAREST 28 -> 224 (pixel replication)", "nearest (resize_mode: nearest)", True),
    Detail("(224) grey input", "grey copied to 3 channels (as_rgb) for torchvision's 3-channel stem",
           "one input channel", False,
           "three equal channels through a 3-channel conv equal one channel through the summed kernel: same "
           "functions, only the first conv's init scale differs"),
    Detail("3D network", "the 2D CIFAR-style ResNet converted by ACSConv's Conv3dConverter; its default "
           "--pretrained_3d i3d inflates the random 2D kernels (repeated along depth, / 3)",
           "MONAI ResNet with the same small stem (3x3x3, stride 1, no max-pool), native 3D Kaiming init, "
           "1x1x1 shortcut convs with a bias", False,
           "same layout and shapes; the init differs (inflated 2D kernels are constant along depth), the "
           "shortcut bias is cancelled by the BatchNorm after it"),
    Detail("3D input", "volumes / 255 in [0, 1], no normalisation", "mean 0.5 / std 0.5 like 2D", False,
           "an affine input change: the stem conv has no bias and its BatchNorm removes scale and shift, except "
           "where zero padding meets the border; a random init's normalisation is not a setting"),
    Detail("3D shape transform", "optional --shape_transform (train x U(0, 1), eval x 0.5) for shape datasets; "
           "the paper does not say whether its 3D rows used it", "not applied", False,
           "unknown whether the published AdrenalMNIST3D cell used it"),
)


def format_details(details=REFERENCE_DETAILS) -> str:
    """Markdown table: each reference detail, what medtransfer does, follows/deviates and why."""
    lines = ["| detail | reference (MedMNIST/experiments) | medtransfer | | why |", "|---|---|---|---|---|"]
    for d in details:
        lines.append(f"| {d.topic} | {d.reference} | {d.medtransfer} | {'follows' if d.follows else 'deviates'} "
                     f"| {d.why} |")
    return "\n".join(lines)
