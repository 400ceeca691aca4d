"""Train the tiny ViT of the evaluation's vision task on scikit-learn's bundled digits.

    python scripts/train_digits_vit.py [--out FOLDER] [--epochs N]

Seeded and deterministic (torch's deterministic algorithms, a fixed thread count, a fixed split from
``attnlrp.evaluation.vision_task.digits_split``). Only the training split is used to fit; the test split is
scored once, at the end, and its accuracy is printed and recorded in ``metrics.json`` beside the weights
(``config.json`` + ``model.safetensors``, tens of KB). Takes about a minute on one CPU core.
No augmentation, no early stopping: 40 epochs of AdamW with a cosine schedule (chosen among three short tries).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
import transformers

from attnlrp.evaluation.vision_task import (
    DIGITS_VIT_DIR,
    SPLIT_SEED,
    TEST_FRACTION,
    accuracy,
    digits_split,
    digits_vit_config,
    load_digits_vit,
)

SEED = 0
THREADS = 1  # tiny matrices: one thread is faster than two, and immune to other processes' load


def train(epochs: int, batch_size: int, lr: float) -> tuple[torch.nn.Module, float]:
    """Fit on the training split with AdamW and a cosine schedule; returns the model and seconds taken."""
    from transformers import ViTForImageClassification

    torch.manual_seed(SEED)
    split = digits_split()
    model = ViTForImageClassification(digits_vit_config())
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(split.train_labels) / batch_size)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / (2 * steps_per_epoch)) * 0.5 * (1 + math.cos(math.pi * step / total))
    )
    generator = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for epoch in range(epochs):
        permutation = torch.randperm(len(split.train_labels), generator=generator)
        for begin in range(0, len(permutation), batch_size):
            rows = permutation[begin : begin + batch_size]
            logits = model(pixel_values=split.train_pixels[rows]).logits
            loss = torch.nn.functional.cross_entropy(logits, split.train_labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: last batch loss {loss.item():.4f}", flush=True)
    return model.eval(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DIGITS_VIT_DIR, help="folder for config.json, weights, metrics")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    model, seconds = train(args.epochs, args.batch_size, args.lr)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))

    # score the saved weights as users will load them, on the test split only
    split = digits_split()
    reloaded = load_digits_vit(args.out)
    test_accuracy = accuracy(reloaded, split.test_pixels, split.test_labels)
    metrics = {
        "test_accuracy": test_accuracy,
        "test_correct": round(test_accuracy * len(split.test_labels)),
        "test_size": len(split.test_labels),
        "train_size": len(split.train_labels),
        "split_seed": SPLIT_SEED,
        "test_fraction": TEST_FRACTION,
        "training_seed": SEED,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "parameters": sum(p.numel() for p in reloaded.parameters()),
        "training_seconds": round(seconds, 1),
        "threads": THREADS,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "command": "python scripts/train_digits_vit.py",
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"test accuracy {test_accuracy:.4f} ({metrics['test_correct']}/{metrics['test_size']}), "
          f"{metrics['parameters']} parameters, trained in {seconds:.1f} s; written to {args.out}")


if __name__ == "__main__":
    main()
