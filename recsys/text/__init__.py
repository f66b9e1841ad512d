"""Item text for language-model recommenders: attribute flattening and a cached LM encoder service.

``recsys.text.flatten`` turns side-table rows into ``key: value`` sentences (and the (key, value) pairs behind
them); ``recsys.text.lm`` embeds texts with a local Hugging Face encoder and caches the vectors on disk. Importing
this package is cheap: transformers loads only when a text actually has to be encoded.
"""

from recsys.text.flatten import FlatText, flatten_pairs, flatten_table, format_value, item_attributes, item_texts
from recsys.text.lm import LMEncoder, default_cache_dir, reduce_dim, resolve_model_dir, text_hash

__all__ = ["FlatText", "flatten_pairs", "flatten_table", "format_value", "item_attributes", "item_texts",
           "LMEncoder", "default_cache_dir", "reduce_dim", "resolve_model_dir", "text_hash"]
