"""Official metrics, one function each."""


def argmax(values: list[float]) -> int:
    """The index of the largest value (the first, on a tie), as torch.argmax gives it."""
    return max(range(len(values)), key=values.__getitem__)


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
    """The official VQA accuracy of one answer against its ten human answers (vqaEval.py at HEAD).

    Every answer loses newlines, tabs and outer spaces. Only when the humans then disagree are the prediction
    and every human answer fully normalised (punctuation, then case, numbers, articles, contractions); ten
    identical human answers are compared as written, so "Yes" x10 does not match "yes". Each human answer is
    left out in turn and the prediction scores min(1, matches among the other nine / 3); the ten scores are
    averaged, summed in the same order as vqaEval.py sums them. (It leaves out every answer record equal to
    the one left out, which is that one alone: each carries its own answer_id.)
    """
    from eval.vqa_normalize import clean_answer, normalize_answer

    humans = [clean_answer(a) for a in human_answers]
    predicted = clean_answer(predicted)
    if len(set(humans)) > 1:
        humans = [normalize_answer(a) for a in humans]
        predicted = normalize_answer(predicted)
    scores = []
    for left_out in range(len(humans)):
        matches = sum(1 for i, a in enumerate(humans) if i != left_out and a == predicted)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def vqa_accuracy_by_type(accuracies: list[float], answer_types: list[str], question_types: list[str]) -> dict:
    """vqa_accuracy, per_answer_type and per_question_type: plain means of the per-question accuracies (summed in
    the given order), as vqaEval.py's setAccuracy forms them, but as fractions sum / n. vqaEval.py reports
    round(100 * sum / n, 2) with Python 2's round (correctly rounded, halves away from zero), so its figure is
    this fraction x 100 rounded so; the two can part only by 0.01 and only for a mean that lies within a bit
    of a rounding half (see tests/test_eval_vqa.py::official_figure)."""
    by_answer_type, by_question_type = {}, {}
    for accuracy, answer_type, question_type in zip(accuracies, answer_types, question_types, strict=True):
        by_answer_type.setdefault(answer_type, []).append(accuracy)
        by_question_type.setdefault(question_type, []).append(accuracy)

    def mean(values):
        return sum(values) / len(values)

    return {"vqa_accuracy": mean(accuracies),
            "per_answer_type": {key: mean(values) for key, values in sorted(by_answer_type.items())},
            "per_question_type": {key: mean(values) for key, values in sorted(by_question_type.items())}}


VQA_SOFT_TARGET = (0.0, 0.3, 0.6, 0.9, 1.0)


def vqa_soft_score(predicted: str, human_answers: list[str]) -> float:
    """The reference repos' (ViLT/VLMo) VQA score: 0/0.3/0.6/0.9/1.0 for 0/1/2/3/4+ raw human answers
    equal to the predicted answer string."""
    return VQA_SOFT_TARGET[min(4, sum(1 for a in human_answers if a == predicted))]


def retrieval_recall(scores_i2t, scores_t2i, image_to_texts: list[list[int]], text_to_image: list[int]) -> dict:
    """Recall@1/5/10 as fractions (the references print percent) for text retrieval (TR, per image) and image
    retrieval (IR, per caption),
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
        return len(np.where(ranks < k)[0]) / len(ranks)

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
