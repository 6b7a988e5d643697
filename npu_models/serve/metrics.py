"""Prometheus metrics under text-embeddings-inference's names (te_*), so dashboards made for TEI read ours."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # the *_created series double the output and no TEI dashboard reads them

# TEI's duration buckets reach from sub-millisecond tokenization to multi-second batches
DURATIONS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("te_request_count", "Requests by endpoint and HTTP status", ["endpoint", "status"],
                                registry=r)
        self.queue_size = Gauge("te_queue_size", "Requests admitted and not yet answered", registry=r)
        self.batch_size = Histogram("te_batch_next_size", "Inputs per batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_tokens = Histogram("te_batch_next_tokens", "Tokens per batch", registry=r,
                                      buckets=(0, 16, 64, 256, 1024, 4096, 16384, 65536))
        self.queue_duration = Histogram("te_request_queue_duration", "Seconds an input waited for its batch",
                                        registry=r, buckets=DURATIONS)
        self.preprocess_duration = Histogram("te_request_tokenization_duration",
                                             "Seconds preparing a request's inputs (tokenization, image decoding and "
                                             "transforms)", registry=r, buckets=DURATIONS)
        self.inference_duration = Histogram("te_batch_inference_duration", "Seconds the device spent on a batch",
                                            registry=r, buckets=DURATIONS)
        self.request_duration = Histogram("te_request_duration", "Seconds from a request's arrival to its answer",
                                          ["endpoint"], registry=r, buckets=DURATIONS)
        self.batch_failures = Counter("te_batch_failure", "Batches the device failed to run", registry=r)
