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


def vqa_accuracy(predicted: str, human_answers: list[str]) -> float:
    """The official VQA accuracy of one answer against its ten human answers (vqaEval.py).

    Each human answer is left out in turn and the prediction scores min(1, matches among the other nine / 3);
    the ten scores are averaged. As in vqaEval.py, normalisation happens only when the humans disagree:
    human answers then lose punctuation, the prediction is fully normalised.
    """
    from eval.vqa_normalize import normalize_answer, process_punctuation

    clean = lambda s: s.replace("\n", " ").replace("\t", " ").strip()  # noqa: E731
    humans = [clean(a) for a in human_answers]
    predicted = clean(predicted)
    if len(set(humans)) > 1:
        humans = [process_punctuation(a) for a in humans]
        predicted = normalize_answer(predicted)
    scores = []
    for left_out in range(len(humans)):
        matches = sum(1 for i, a in enumerate(humans) if i != left_out and a == predicted)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


VQA_SOFT_TARGET = (0.0, 0.3, 0.6, 0.9, 1.0)


def vqa_soft_score(predicted: str, human_answers: list[str]) -> float:
    """The reference repos' (ViLT/VLMo) VQA score: 0/0.3/0.6/0.9/1.0 for 0/1/2/3/4+ raw human answers
    equal to the predicted answer string."""
    return VQA_SOFT_TARGET[min(4, sum(1 for a in human_answers if a == predicted))]


def retrieval_recall(scores_i2t, scores_t2i, image_to_texts: list[list[int]], text_to_image: list[int]) -> dict:
    """Recall@1/5/10 in percent for text retrieval (TR, per image) and image retrieval (IR, per caption),
    ranked as the reference evaluations rank (numpy argsort, descending); r_mean averages both means."""
    import numpy as np

    scores_i2t, scores_t2i = np.asarray(scores_i2t), np.asarray(scores_t2i)
    text_ranks = np.zeros(len(image_to_texts))
    for image, row in enumerate(scores_i2t):
        order = np.argsort(row)[::-1]
        text_ranks[image] = min(np.where(order == t)[0][0] for t in image_to_texts[image])
    image_ranks = np.zeros(len(text_to_image))
    for text, row in enumerate(scores_t2i):
        order = np.argsort(row)[::-1]
        image_ranks[text] = np.where(order == text_to_image[text])[0][0]

    def recall(ranks, k):
        return 100.0 * len(np.where(ranks < k)[0]) / len(ranks)

    out = {f"txt_r{k}": recall(text_ranks, k) for k in (1, 5, 10)}
    out.update({f"img_r{k}": recall(image_ranks, k) for k in (1, 5, 10)})
    out["txt_r_mean"] = (out["txt_r1"] + out["txt_r5"] + out["txt_r10"]) / 3
    out["img_r_mean"] = (out["img_r1"] + out["img_r5"] + out["img_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def answer_label_weights(human_answers: list[str], answer_index: dict[str, int]) -> dict[int, float]:
    """AllenNLP's VQA targets: each normalised human answer in the vocabulary weighs min(1, count / 3)."""
    from collections import Counter

    from eval.data.vqa import normalize_word

    counts = Counter(normalize_word(a) for a in human_answers)
    return {answer_index[a]: min(1.0, c / 3) for a, c in counts.items() if a in answer_index}


def float32_mean(values: list[float]) -> float:
    """The reference's VqaMeasure mean: its total is held in a float32 tensor, the division is done in Python."""
    import math

    import numpy as np

    return float(np.float32(math.fsum(values))) / len(values)


def micro_precision_recall_f1(true_positives: int, predicted: int, gold: int) -> tuple[float, float, float]:
    """Micro-averaged precision, recall and F1 over all labels, in float32 as AllenNLP's FBetaMultiLabelMeasure."""
    import torch

    tp = torch.tensor(float(true_positives))
    precision = tp / predicted if predicted else torch.tensor(0.0)
    recall = tp / gold if gold else torch.tensor(0.0)
    f1 = 2 * precision * recall / (precision + recall) if (precision + recall) > 0 else torch.tensor(0.0)
    return precision.item(), recall.item(), f1.item()
