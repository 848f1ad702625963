"""The packaged recipes: this folder is installed as ``segzoo.configs`` (see ``segzoo.recipes``)."""
