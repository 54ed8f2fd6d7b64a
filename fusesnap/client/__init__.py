"""Client workflows: what the `fusesnap images` commands do through the
daemon's gRPC APIs, in the user's process: OCI archives (`archive`), import
(`importer`), commit of a snapshot as an image (`commit`) and export
(`export`). They import the generated stubs and the image records' types, and
no part of the daemon imports them."""
