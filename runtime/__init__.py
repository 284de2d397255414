"""gwc runtime: the data plane. Owns the bundle format and its verification; never imports the compiler."""
