"""klined's trio actors: tasks that own state and call the pure core in ``protocol``."""
