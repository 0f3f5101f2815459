"""The experiment as one plain script, written the straightforward way: the baseline of rows 1, 4 and 5.

It reads the same params.yaml, draws the same dataset, trains every arm from the
same initial weights and draws the same figures as the pipeline, in one process:

- every per-step value leaves torch through `.item()`, and the weight norm is
  summed over the parameters in Python;
- each rare step gets its own `axvline` on every axis;
- with `--tracking-uri`, every value goes to MLflow in its own `log_metric` call
  (three calls per step), straight from the training loop.

    python -m benchmarks.naive --params params.yaml --out DIR [--tracking-uri URI] [--timings FILE]
"""

import argparse
import csv
import json
import math
import random
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

SERIES = ("loss", "grad_norm", "weight_norm")


class Model(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.linear = nn.Linear(embedding_dim, vocab_size)

    def forward(self, tokens):
        return self.linear(self.embedding(tokens))


def draw_dataset(seed: int, n_samples: int, n_rare: int, vocab_size: int):
    """Return inputs, targets (torch int64) and the sorted rare positions, as the dataset stage draws them."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    inputs = torch.randint(0, vocab_size, (n_samples,))
    rare_indices = sorted(random.sample(range(n_samples), n_rare))
    targets = torch.zeros(n_samples, dtype=torch.int64)
    targets[rare_indices] = 1
    return inputs, targets, rare_indices


def initial_weights(vocab_size: int, embedding_dim: int, seed: int) -> dict:
    torch.manual_seed(seed)
    return {name: tensor.clone() for name, tensor in Model(vocab_size, embedding_dim).state_dict().items()}


def train_naive(inputs, targets, weights: dict, embedding_dim: int, lr: float, epochs: int, max_norm, on_step=None):
    """Train one arm by per-sample SGD; return the per-step loss, gradient norm and weight norm lists.

    `on_step(step, loss, grad_norm, weight_norm)` is called after every step when given.
    """
    model = Model(weights["linear.weight"].shape[0], embedding_dim)
    model.load_state_dict(weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    clip_to = math.inf if max_norm is None else max_norm

    losses, grad_norms, weight_norms = [], [], []
    step = 0
    for _ in range(epochs):
        for index in range(len(inputs)):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs[index : index + 1]), targets[index : index + 1])
            loss.backward()
            # Returns the norm before clipping; with an infinite limit nothing is scaled.
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_to)
            optimizer.step()

            weight_norm = math.sqrt(sum(parameter.detach().norm().item() ** 2 for parameter in model.parameters()))
            losses.append(loss.item())
            grad_norms.append(grad_norm.item())
            weight_norms.append(weight_norm)
            if on_step is not None:
                on_step(step, losses[-1], grad_norms[-1], weight_norm)
            step += 1
    return losses, grad_norms, weight_norms


def write_outputs(out: Path, arm: str, series: dict, n_samples: int) -> None:
    with open(out / f"{arm}.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["step", "epoch", *SERIES])
        for step, values in enumerate(zip(*(series[name] for name in SERIES))):
            writer.writerow([step, step // n_samples + 1, *values])
    grad = np.array(series["grad_norm"])
    summary = {
        "steps": len(grad),
        "max_grad_norm": float(grad.max()),
        "mean_grad_norm": float(grad.mean()),
        "std_grad_norm": float(grad.std()),
        "final_weight_norm": series["weight_norm"][-1],
        "final_loss": series["loss"][-1],
    }
    (out / f"{arm}.json").write_text(json.dumps(summary, indent=2))


def draw_column(axes, series: dict, rare_steps: list[int], max_norm) -> None:
    labels = ("Training loss", "Gradient L2 norm", "Weight L2 norm")
    for axis, name, label in zip(axes, SERIES, labels):
        axis.plot(series[name], linewidth=0.5, alpha=0.8)
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        for step in rare_steps:
            axis.axvline(step, color="red", alpha=0.25, linewidth=0.5)
    if max_norm is not None:
        axes[1].axhline(max_norm, color="red", linestyle="--")
    axes[-1].set_xlabel("Training step")


def plot(out: Path, results: dict, arms: dict, rare_steps: list[int], dpi: int) -> list[Path]:
    paths = []
    for arm, series in results.items():
        figure, axes = plt.subplots(3, 1, figsize=(12, 10), sharex=True)
        draw_column(axes, series, rare_steps, arms[arm]["max_norm"])
        axes[0].set_title(f"Training {arm}")
        figure.tight_layout()
        paths.append(out / f"{arm}.png")
        figure.savefig(paths[-1], dpi=dpi)
        plt.close(figure)

    figure, axes = plt.subplots(3, len(results), figsize=(5.5 * len(results) + 1.5, 11), sharex=True, squeeze=False)
    for column, (arm, series) in enumerate(results.items()):
        draw_column(axes[:, column], series, rare_steps, arms[arm]["max_norm"])
        axes[0, column].set_title(arm)
    figure.tight_layout()
    paths.append(out / "comparison.png")
    figure.savefig(paths[-1], dpi=dpi)
    plt.close(figure)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file to read")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSV, JSON and PNG files")
    parser.add_argument("--tracking-uri", help="MLflow store; when given, log every value with log_metric")
    parser.add_argument("--timings", type=Path, help="JSON file to write per-arm training and logging seconds into")
    args = parser.parse_args()

    params = yaml.safe_load(args.params.read_text())
    dataset, model = params["dataset"], params["model"]
    vocab_size = len(dataset["vocab"])
    inputs, targets, rare_indices = draw_dataset(dataset["seed"], dataset["n_samples"], dataset["n_rare"], vocab_size)
    weights = initial_weights(vocab_size, model["embedding_dim"], model["init_seed"])
    args.out.mkdir(parents=True, exist_ok=True)

    if args.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_experiment(params["tracking"]["experiment_name"])

    results, run_ids, timings = {}, {}, {}
    for arm, settings in params["arms"].items():
        logging_seconds = 0.0

        def log_step(step, loss, grad_norm, weight_norm):
            nonlocal logging_seconds
            started = time.perf_counter()
            mlflow.log_metric("loss", loss, step=step)
            mlflow.log_metric("grad_norm", grad_norm, step=step)
            mlflow.log_metric("weight_norm", weight_norm, step=step)
            logging_seconds += time.perf_counter() - started

        started = time.perf_counter()
        if args.tracking_uri:
            run = mlflow.start_run(run_name=arm)
            mlflow.log_params({"max_norm": settings["max_norm"], **params["train"]})
        series = train_naive(
            inputs, targets, weights, model["embedding_dim"], params["train"]["lr"], params["train"]["epochs"],
            settings["max_norm"], on_step=log_step if args.tracking_uri else None,
        )
        if args.tracking_uri:
            run_ids[arm] = run.info.run_id
            mlflow.end_run()
        timings[arm] = {"seconds": time.perf_counter() - started, "log_metric_seconds": logging_seconds}
        results[arm] = dict(zip(SERIES, series))
        write_outputs(args.out, arm, results[arm], len(inputs))

    n_samples = len(inputs)
    epochs = params["train"]["epochs"]
    rare_steps = [epoch * n_samples + index for epoch in range(epochs) for index in rare_indices]
    figures = plot(args.out, results, params["arms"], rare_steps, params["plots"]["dpi"])

    if args.tracking_uri:
        for arm, run_id in run_ids.items():
            with mlflow.start_run(run_id=run_id):
                mlflow.log_artifact(str(args.out / f"{arm}.png"))
                mlflow.log_artifact(str(figures[-1]))
    if args.timings:
        args.timings.write_text(json.dumps(timings, indent=2))


if __name__ == "__main__":
    main()
