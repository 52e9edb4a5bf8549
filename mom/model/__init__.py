"""The model core: module pools, routers, dispatchers, attention, the KV cache and the :class:`MoM` that assembles
them. One code path for every architecture; vanilla GPT-2 and each special case are configurations."""
