"""Reading Prometheus text exposition in tests."""

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def parse_samples(text: str) -> Samples:
    """Return every sample of a scrape, keyed by sample name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value, 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series_of(samples: Samples, name: str) -> set[frozenset]:
    return {labels for sample_name, labels in samples if sample_name == name}
