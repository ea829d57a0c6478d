"""A stand-in training script for examples/command.yaml: JSON hyperparameters in, JSON metrics out."""

import json
import math
import sys

params = json.load(sys.stdin)
loss = (math.log10(params["learning_rate"]) + 3.5) ** 2 + ((params["warmup"] - 30) / 50) ** 2
print("training... done")  # anything else on stdout is fine; the last JSON line counts
print(json.dumps({"loss": loss, "steps": 100}))
