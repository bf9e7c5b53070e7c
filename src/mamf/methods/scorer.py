"""What adapting to a test task gives: a `Scorer`, which classifies that task's query images.

A method's `adapt` returns one per test task, holding whatever it fitted there (a cache, a
probe, the fine-tuned model), so nothing of a task stays on the method between tasks; the
meta-test asks it for the query images' classes and scores them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Scorer(ABC):
    """One test task as a method adapted to it.

    Example (a scorer that gives every query image class 0):

    >>> class Constant(Scorer):
    ...     def __init__(self, queries: int):
    ...         self.queries = queries
    ...     def predict(self) -> np.ndarray:
    ...         return np.zeros(self.queries, dtype=np.int64)
    >>> Constant(3).predict().tolist()
    [0, 0, 0]
    """

    @abstractmethod
    def predict(self) -> np.ndarray:
        """Returns:
            The class (0..n-1, an int64 array, one entry a query image, in the task's query
            order) the method gives each of the task's query images.
        """


class Predicted(Scorer):
    """A task whose query images were classified together with others' (the batched meta-test
    scores a chunk of tasks in one call): their classes, as given.

    Args:
        classes: the class (0..n-1) of each query image.
    """

    def __init__(self, classes: np.ndarray):
        self.classes = np.asarray(classes)

    def predict(self) -> np.ndarray:
        return self.classes
