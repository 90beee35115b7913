package updater

import (
	"fmt"
	"strings"
	"time"

	"github.com/shoalfleet/shoal/spec"
)

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

func parseHHMM(s string) (time.Duration, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, fmt.Errorf("time %q: want HH:MM", s)
	}
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute, nil
}

// windowState reports whether t is inside one of the maintenance windows and,
// when it is not, when the next one opens. No windows means always open. A
// window whose end is not after its start crosses midnight; its days are the
// days it starts on. Times are wall-clock in the window's zone, so DST shifts
// the window with the local clock.
func windowState(ws []spec.Window, t time.Time) (open bool, next time.Time, err error) {
	if len(ws) == 0 {
		return true, time.Time{}, nil
	}
	for i, w := range ws {
		loc, err := time.LoadLocation(w.Timezone)
		if err != nil {
			return false, time.Time{}, fmt.Errorf("window %d: timezone %q: %w", i, w.Timezone, err)
		}
		start, err := parseHHMM(w.Start)
		if err != nil {
			return false, time.Time{}, fmt.Errorf("window %d: start: %w", i, err)
		}
		end, err := parseHHMM(w.End)
		if err != nil {
			return false, time.Time{}, fmt.Errorf("window %d: end: %w", i, err)
		}
		length := end - start
		if length <= 0 {
			length += 24 * time.Hour
		}
		days := map[time.Weekday]bool{}
		for _, d := range w.Days {
			wd, ok := weekdays[strings.ToLower(d)[:min(3, len(d))]]
			if !ok {
				return false, time.Time{}, fmt.Errorf("window %d: day %q", i, d)
			}
			days[wd] = true
		}
		lt := t.In(loc)
		for delta := -1; delta <= 8; delta++ {
			day := time.Date(lt.Year(), lt.Month(), lt.Day()+delta, 0, 0, 0, 0, loc)
			if len(days) > 0 && !days[day.Weekday()] {
				continue
			}
			s := time.Date(day.Year(), day.Month(), day.Day(), int(start/time.Hour), int(start%time.Hour/time.Minute), 0, 0, loc)
			e := s.Add(length)
			if !t.Before(s) && t.Before(e) {
				return true, time.Time{}, nil
			}
			if s.After(t) && (next.IsZero() || s.Before(next)) {
				next = s
			}
		}
	}
	return false, next, nil
}
