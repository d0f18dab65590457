"""Graph-to-graph passes. Each pass is a plain function `Graph -> Graph` (architecture.md lesson 3);
`kcc.pipeline` calls them in order: `canonicalize` (target-independent clean-up), then the
lowering passes."""
