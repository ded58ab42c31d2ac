"""E-commerce data: published-format loaders, the bundled catalogue, task converters, packing.

Records: :class:`Product`, :class:`QAItem`, :class:`Example` (see :mod:`ecomllm.data.schema`).
"""

from .catalog import Catalog, generate_catalog, pretraining_corpus, read_catalog, write_catalog
from .schema import (AttributeSpan, CATEGORY_SEPARATOR, DataError, Example, GENERAL_TASK, NOT_AVAILABLE, Paragraph,
                     Product, QAItem, TASK_PREFIXES, UNANSWERABLE_ANSWER, from_dict, to_dict)

__all__ = ["AttributeSpan", "CATEGORY_SEPARATOR", "Catalog", "DataError", "Example", "GENERAL_TASK", "NOT_AVAILABLE",
           "Paragraph", "Product", "QAItem", "TASK_PREFIXES", "UNANSWERABLE_ANSWER", "from_dict", "generate_catalog",
           "pretraining_corpus", "read_catalog", "to_dict", "write_catalog"]
