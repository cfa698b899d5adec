"""lmspec.serve: the serving engine that drives any backend through the registry: the paged KV
block manager (an explicit, inspectable state machine with prefix caching), the scheduler
(continuous batching with chunked prefill), the sampler, and the OpenAI-compatible server
behind ``lmspec serve``."""
