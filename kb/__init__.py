"""A searchable knowledge base over engineering blog feeds."""

__version__ = "0.1.0"
