"""Kernels larger than one call: blocks of a kernel (:mod:`.blocks`), streamed to one
``.npy`` (:mod:`.stream`), written to a chunked store by any number of workers
(:mod:`.store_write`, :mod:`.workers`) and read back lazily (:mod:`.store_read`), or rows
sharded over devices (:mod:`.sharding`)."""
