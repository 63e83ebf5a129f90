"""A zone's idle power, learned on a host that is never idle.

A CPU package draws, to a good approximation, P = P_idle + k x U, with U
the utilisation of its CPUs. Every tick gives one point (U, P) per zone;
the intercept of the least-squares line through them is P_idle, whatever
the load level, as long as the load moves a little (it always does on a
real compute node: guests burst, the host works, timers fire). The
minimum power ever seen, which the first version used, is the loaded power
itself on a host that is never quiet, and handed instances next to
nothing (issue 9).

Points are weighted by their interval and forgotten exponentially with
time constant ``window_s``, so the line follows slow drifts (temperature,
firmware) and a long pause is one point, not many.

Until the fit is tight the estimate is **conservative**: the lower
confidence bound of the intercept, clamped to [0, lowest power seen], so
an unconverged estimate can only under-state idle (instances are then
charged a little of the idle power as if it were dynamic) and never
swallows the dynamic part. A real power curve is slightly convex in U
(frequency rises with load); the intercept of a line fitted to a convex
curve lies below the true idle power, the same safe direction.
"""

import dataclasses
import math

STATE_CONFIGURED = 'configured'
STATE_LEARNED = 'learned'
STATE_CALIBRATING = 'calibrating'
STATES = (STATE_CALIBRATING, STATE_LEARNED, STATE_CONFIGURED)

# A fit counts as converged with at least this many points' worth of
# weight, this spread of utilisation, and an intercept known this well:
# an error of e watts in idle moves e x (instance CPU / socket busy) from
# or to each instance, so what matters is e against the dynamic power.
MIN_POINTS = 20
MIN_SPREAD = 0.01            # standard deviation of U
MAX_STDERR_W = 0.5           # absolute, or ...
MAX_STDERR_FRACTION = 0.02   # ... relative to the mean dynamic power
# Before convergence: no estimate from fewer points than this, then the
# intercept minus this many standard errors.
MIN_POINTS_FOR_BOUND = 10
CONFIDENCE_Z = 3.0


@dataclasses.dataclass(frozen=True)
class IdleEstimate:
    state: str      # configured | learned | calibrating
    watts: float


@dataclasses.dataclass(frozen=True)
class Fit:
    intercept: float
    slope: float
    stderr: float
    spread: float
    points: float
    mean_power: float


@dataclasses.dataclass
class IdleModel:
    """Weighted running sums of one zone's (utilisation, power) points."""
    window_s: float = 3600.0
    sw: float = 0.0      # sum of weights
    sw2: float = 0.0     # sum of squared weights (effective point count)
    su: float = 0.0
    sp: float = 0.0
    suu: float = 0.0
    sup: float = 0.0
    spp: float = 0.0
    min_power_w: float | None = None
    learned_w: float | None = None   # last converged intercept

    FIELDS = ('sw', 'sw2', 'su', 'sp', 'suu', 'sup', 'spp')

    def observe(self, interval_s, utilisation, power_w):
        if not (interval_s > 0 and math.isfinite(power_w)
                and math.isfinite(utilisation) and power_w >= 0):
            return
        utilisation = min(max(utilisation, 0.0), 1.0)
        keep = math.exp(-interval_s / self.window_s)
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name) * keep)
        self.sw2 *= keep  # squared weights decay twice: keep^2 overall
        w = interval_s
        self.sw += w
        self.sw2 += w * w
        self.su += w * utilisation
        self.sp += w * power_w
        self.suu += w * utilisation * utilisation
        self.sup += w * utilisation * power_w
        self.spp += w * power_w * power_w
        if self.min_power_w is None or power_w < self.min_power_w:
            self.min_power_w = power_w
        fit = self.fit()
        if fit is not None and self.converged(fit):
            self.learned_w = self._clamp(fit.intercept)

    def fit(self):
        """The weighted least-squares line, or None with too few points."""
        if self.sw <= 0 or self.sw2 <= 0:
            return None
        points = self.sw * self.sw / self.sw2
        mean_u, mean_p = self.su / self.sw, self.sp / self.sw
        var_u = self.suu / self.sw - mean_u * mean_u
        if points < 3 or var_u <= 1e-12:
            return None
        slope = (self.sup / self.sw - mean_u * mean_p) / var_u
        intercept = mean_p - slope * mean_u
        var_p = self.spp / self.sw - mean_p * mean_p
        residual = max(var_p - slope * slope * var_u, 0.0)
        sigma2 = residual * points / (points - 2)
        stderr = math.sqrt(sigma2 / points * (1 + mean_u * mean_u / var_u))
        return Fit(intercept, slope, stderr, math.sqrt(var_u), points,
                   mean_p)

    @staticmethod
    def converged(fit):
        return (fit.points >= MIN_POINTS and fit.spread >= MIN_SPREAD
                and fit.slope > 0
                and fit.stderr <= max(
                    MAX_STDERR_W,
                    MAX_STDERR_FRACTION * (fit.mean_power - fit.intercept)))

    def _clamp(self, watts):
        ceiling = self.min_power_w if self.min_power_w is not None else 0.0
        return min(max(watts, 0.0), ceiling)

    def estimate(self):
        fit = self.fit()
        if fit is not None and self.converged(fit):
            return IdleEstimate(STATE_LEARNED, self._clamp(fit.intercept))
        if self.learned_w is not None:
            # Converged once; the load went flat since (nothing more to
            # learn from), the idle power itself did not move.
            return IdleEstimate(STATE_LEARNED, self.learned_w)
        if fit is None or fit.points < MIN_POINTS_FOR_BOUND:
            return IdleEstimate(STATE_CALIBRATING, 0.0)
        return IdleEstimate(STATE_CALIBRATING, self._clamp(
            fit.intercept - CONFIDENCE_Z * fit.stderr))

    def to_dict(self):
        return {name: getattr(self, name) for name in
                self.FIELDS + ('min_power_w', 'learned_w')}

    @classmethod
    def from_dict(cls, doc, window_s):
        model = cls(window_s=window_s)
        for name in cls.FIELDS:
            value = doc.get(name, 0.0)
            if not isinstance(value, (int, float)) or not math.isfinite(
                    value):
                raise ValueError('idle model field %s is %r' % (name, value))
            setattr(model, name, float(value))
        for name in ('min_power_w', 'learned_w'):
            value = doc.get(name)
            if value is not None and not isinstance(value, (int, float)):
                raise ValueError('idle model field %s is %r' % (name, value))
            setattr(model, name, None if value is None else float(value))
        return model
