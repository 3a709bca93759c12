"""ServerApp: FedAvg, wrapped so that it aggregates the clients' 3SFC payloads."""

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from e3sfc.flower.addon import CompressedStrategy
from flower_app.task import INPUT_SHAPE, NUM_CLASSES, Net

app = ServerApp()
RESULT = {}  # the last run's result, for whoever started the app in this process


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = {"num-server-rounds": 8, "fraction-train": 1.0, "lr": 0.1, "num-partitions": 4, **context.run_config}
    strategy = FedAvg(fraction_train=cfg["fraction-train"], fraction_evaluate=1.0,
                      min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=cfg["num-partitions"])
    strategy = CompressedStrategy(strategy, Net, INPUT_SHAPE, NUM_CLASSES, run_config=context.run_config)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                            train_config=ConfigRecord({"lr": cfg["lr"]}), num_rounds=cfg["num-server-rounds"])
    RESULT["result"] = result
