"""Reading ELF files (relocatable objects and linked images) and the one writer."""
