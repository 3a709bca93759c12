"""ClientApp: trains the model it receives on its partition and returns it, as any Flower app does."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from e3sfc.flower.addon import compression_mod
from flower_app.task import INPUT_SHAPE, NUM_CLASSES, Net, load_data, test, train

app = ClientApp(mods=[compression_mod(Net, INPUT_SHAPE, NUM_CLASSES)])  # settings: the run config's e3sfc-* keys


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y, _, _ = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    loss = train(net, x, y, context.run_config.get("local-epochs", 2), msg.content["config"]["lr"])
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()),
                          "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, _, x, y = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    loss, acc = test(net, x, y)
    content = RecordDict({"metrics": MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(y)})})
    return Message(content=content, reply_to=msg)
