"""Which tree serves a request: by inode, and by the reserved names of a bucket's root.

A bucket's mount has one main tree (the bucket, or with ``--at`` the bucket as it was
then) and special trees, each reached by a reserved name in the root (``.s3``,
``.versions``). All of them keep their nodes in the bucket's one inode table
(``Namespace``), so an inode's path says its tree. All-buckets mode puts one more level
above this (``allbuckets.AllBucketsRouter``: the root of buckets, then a
``BucketRouter`` per bucket).

A new special tree is a module with a ``NamespaceTree`` that has a ``name`` (its
reserved name) and a ``root_entry()``, plus one line in ``BucketRouter._special``.
"""

from __future__ import annotations

import errno
from typing import Protocol

import trio

from .blockcache import BlockCache
from .buckettree import BucketTree
from .controldir import ControlTree
from .errors import FsError
from .historytree import HistoryTree, VersionsTree
from .inodes import KernelPageCache, Node
from .namespace import Namespace
from .options import Config
from .s3client import S3Client
from .tree import NamespaceTree, SpecialTree, Tree
from .versions import TimeView


def no_such_inode(inode: int) -> FsError:
    return FsError(errno.ENOENT, "NoSuchInode", f"inode {inode} is not known (forgotten)")


class Router(Protocol):
    """What the adapter asks of the mount's trees as a whole."""

    async def route(self, inode: int) -> tuple[Tree, Node]:
        """The tree that serves inode, and its node; ENOENT when the inode is not known."""

    async def child_tree(self, parent: Tree, parent_node: Node, name: str) -> Tree:
        """The tree that serves name in directory parent_node (served by parent)."""

    def forget(self, inodes: list[tuple[int, int]]) -> None: ...

    async def shutdown(self) -> None: ...


class BucketRouter:
    """One bucket's trees: the main one, and the special ones at their reserved names."""

    def __init__(self, s3: S3Client, ns: Namespace, main: NamespaceTree, special: list[SpecialTree]) -> None:
        self.s3 = s3
        self.ns = ns
        self.main = main
        self.bucket = main if isinstance(main, BucketTree) else None
        self.special = {tree.name: tree for tree in special}

    @classmethod
    async def make(
        cls,
        s3: S3Client,
        opts: Config,
        page_cache: KernelPageCache,
        blocks: BlockCache,
        nursery: trio.Nursery,
        root: Node | None = None,
    ) -> BucketRouter:
        """page_cache: the kernel's, of the mount's files; root: the root's node, if another router made it;
        nursery: where the trees' background work runs."""
        ns = Namespace(s3, opts, page_cache, root)
        ns.nursery = nursery
        special = cls._special(s3, opts, ns, blocks)
        main: NamespaceTree
        if opts.mount.at is not None:  # the whole mount is the bucket as it was then (mounted read-only)
            main = HistoryTree(s3, opts, ns, blocks, TimeView(s3, opts, opts.mount.at))
        else:
            shown = opts.mount.show_control_dir
            reserved = [(tree.name, tree.root_entry() if shown else None) for tree in special]
            main = await BucketTree.make(s3, opts, ns, blocks, reserved, nursery)
        router = cls(s3, ns, main, special)
        for tree in router.trees:
            tree.start(nursery)
        return router

    @staticmethod
    def _special(s3: S3Client, opts: Config, ns: Namespace, blocks: BlockCache) -> list[SpecialTree]:
        """The trees at reserved names of the root: one line each."""
        return [
            ControlTree(s3, opts, ns),
            *([VersionsTree(s3, opts, ns, blocks)] if opts.mount.at is None else []),  # no history of the past
        ]

    @property
    def trees(self) -> list[NamespaceTree]:
        return [self.main, *self.special.values()]

    def tree_of(self, node: Node) -> NamespaceTree:
        return self.special.get(node.path.partition("/")[0], self.main)

    async def route(self, inode: int) -> tuple[Tree, Node]:
        node = self.ns.node(inode)
        if node is None:
            raise no_such_inode(inode)
        return self.tree_of(node), node

    async def child_tree(self, parent: Tree, parent_node: Node, name: str) -> Tree:
        if parent_node.path == "":
            return self.special.get(name, parent)
        return parent

    def forget(self, inodes: list[tuple[int, int]]) -> None:
        for inode, count in inodes:
            self.ns.forget(inode, count)

    async def shutdown(self) -> None:
        for tree in self.trees:
            await tree.shutdown()
