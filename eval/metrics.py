"""Official metrics, one function each."""


def accuracy(predictions: list[int], labels: list[int]) -> float:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set")
    return sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def top_k_accuracy(ranked_predictions: list[list[int]], labels: list[int], k: int) -> float:
    """Share of examples whose label is among the first k of their ranked predictions."""
    if len(ranked_predictions) != len(labels):
        raise ValueError(f"{len(ranked_predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set")
    return sum(int(y in ranked[:k]) for ranked, y in zip(ranked_predictions, labels)) / len(labels)
