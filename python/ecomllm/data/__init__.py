"""E-commerce data: published-format loaders, the bundled catalogue, task converters, packing.

Records: :class:`Product`, :class:`QAItem`, :class:`Example` (see :mod:`ecomllm.data.schema`).
Loaders: :mod:`ecomllm.data.formats`; category trees: :mod:`ecomllm.data.taxonomy`; task prompts,
the task mix and splits: :mod:`ecomllm.data.tasks`; the bundled offline catalogue:
:mod:`ecomllm.data.catalog`; templates and packing: :mod:`ecomllm.data.templates`, :mod:`ecomllm.data.packing`.
"""

from .schema import (AttributeSpan, CATEGORY_SEPARATOR, DataError, Example, GENERAL_TASK, MatchPair, NOT_AVAILABLE,
                     Paragraph, Product, QAItem, TASK_PREFIXES, UNANSWERABLE_ANSWER, from_dict, to_dict)
from .catalog import Catalog, generate_catalog, pretraining_corpus, read_catalog, write_catalog
from .taxonomy import Taxonomy, format_path, parse_path
from .formats import (clean_flipkart_path, iter_jsonl, load_amazonqa, load_ecinstruct, load_flipkart,
                      load_google_taxonomy, load_matching_pairs, load_mave, load_offers, load_product_qa_csv)
from .tasks import (DEFAULT_SPLITS, assign_split, build_instruction_set, classify_example, extract_example,
                    ood_split, qa_example, split_examples, truncate_words)

__all__ = ["AttributeSpan", "CATEGORY_SEPARATOR", "DataError", "Example", "GENERAL_TASK", "MatchPair", "NOT_AVAILABLE",
           "Paragraph", "Product", "QAItem", "TASK_PREFIXES", "UNANSWERABLE_ANSWER", "from_dict", "to_dict",
           "Taxonomy", "format_path", "parse_path",
           "clean_flipkart_path", "iter_jsonl", "load_amazonqa", "load_ecinstruct", "load_flipkart",
           "load_google_taxonomy", "load_matching_pairs", "load_mave", "load_offers", "load_product_qa_csv",
           "DEFAULT_SPLITS", "assign_split", "build_instruction_set", "classify_example", "extract_example",
           "ood_split", "qa_example", "split_examples", "truncate_words",
           "Catalog", "generate_catalog", "pretraining_corpus", "read_catalog", "write_catalog"]
