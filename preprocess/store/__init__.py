"""Graph stores: sharded Zarr or Arrow files, a Parquet index and a manifest.

Layout of a store directory::

    manifest.json          written last; its presence marks a complete store
    build.json             written first: which store the shards are of (preprocess.store.reuse)
    index.parquet          one row per frame: ids, shard, row, sizes, energy, composition, split,
                           config_type (null where the source has none)
    quarantine.parquet     records that could not be used, with the reason
    shards/shard-NNNNNN/   one committed shard: data files, index.parquet, commit.json
"""
from orbitgraph.errors import NotAStoreError, StoreError
from orbitgraph.preprocess.graph_params import GraphParams
from orbitgraph.preprocess.store.manifest import (
    Manifest,
    SourceInfo,
    StoreSpec,
    read_manifest,
)
from orbitgraph.preprocess.store.params import SplitParams
from orbitgraph.preprocess.store.reader import GraphStore, ShardData, centers_of, open_store
from orbitgraph.preprocess.store.verify import VerifyReport, verify_store
from orbitgraph.preprocess.store.writer import (
    empty_splits,
    finalize_store,
    split_of,
    write_frames_shard,
)

__all__ = [
    "GraphParams", "GraphStore", "Manifest", "NotAStoreError", "ShardData", "SourceInfo",
    "SplitParams", "StoreError", "StoreSpec", "VerifyReport", "centers_of", "empty_splits",
    "finalize_store", "open_store", "read_manifest", "split_of", "verify_store",
    "write_frames_shard",
]
