"""Every test process sets the allocator as graphsam-train does, first."""

from models import allocator

allocator.retain_freed_memory()
