from dataclasses import dataclass
@dataclass
class Limits:
    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 256
    max_items: int = 64
    max_length: int = 2000
    max_generate: int = 1000
    max_body: int = 1_000_000
