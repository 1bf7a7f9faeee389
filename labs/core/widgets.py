"""A step button for notebooks: call the engine's `step()`, redraw what changed.

Why a helper: Labs 2 and 3 both let the learner advance the real engine one step at a time and
watch it. Headless runs (CI, `make tour`) cannot click, so `Stepper.run(n)` does the same thing
programmatically and the notebook still shows the final picture.
"""

from __future__ import annotations

from typing import Any, Callable


class Stepper:
    """Buttons "step" and "step x10" plus an output area redrawn after every step.

    Args:
        step: advances the engine by one step; returns False when there is nothing left to do.
        render: draws the current state (prints, matplotlib figures, DataFrames) into the output.
    """

    def __init__(self, step: Callable[[], bool], render: Callable[[], None]) -> None:
        import ipywidgets as widgets

        self._step, self._render = step, render
        self.output = widgets.Output()
        one = widgets.Button(description="engine.step()", icon="step-forward")
        ten = widgets.Button(description="step x10", icon="fast-forward")
        one.on_click(lambda _: self.run(1))
        ten.on_click(lambda _: self.run(10))
        self.widget = widgets.VBox([widgets.HBox([one, ten]), self.output])

    def run(self, num_steps: int, here: bool = False) -> None:
        """Advance up to `num_steps` steps, then redraw once.

        Args:
            num_steps: steps to take (stops early when there is nothing left to do).
            here: draw into the calling cell's output instead of the widget's. Headless runs
                (CI, `make tour`) keep widget contents out of the saved notebook, so their cells use this.
        """
        from IPython.display import clear_output

        for _ in range(num_steps):
            if not self._step():
                break
        if here:
            self._render()
            return
        with self.output:
            clear_output(wait=True)
            self._render()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
        self.run(0)


def show_figure(fig: Any) -> None:
    """Display a matplotlib figure once (inside a widget's output too) and release it."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    display(fig)
    plt.close(fig)
