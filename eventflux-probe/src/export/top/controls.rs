//! What the keys of `top` change: the order and filter of the rows, pause, the selected query
//! and its detail view. Pure state, so that every key is tested without a terminal.
//!
//! | Key | What it does |
//! |---|---|
//! | `q`, Ctrl-C | leave (the terminal is restored) |
//! | `↑` `↓` (`k` `j`) | select a query |
//! | `enter` | the selected query's stages; `enter`, `esc` or `⌫` go back |
//! | `s` / `S` (`>` / `<`) | sort by the next / previous column |
//! | `r` | reverse the order |
//! | `/` | filter by name: type, `enter` keeps it, `esc` clears it |
//! | `p`, space | pause: no readings, the screen holds (sorting and filtering still apply) |

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::view::{Column, Order, View};

/// The state the keys change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Controls {
    pub order: Order,
    pub paused: bool,
    /// Typing a filter (it applies as it is typed).
    pub editing: bool,
    /// Index into the view's query rows.
    pub selected: usize,
    /// The query whose stages are shown: (pid, name).
    pub detail: Option<(u32, String)>,
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Redraw,
    Quit,
}

impl Controls {
    /// Applies a key to the state, with the view on screen.
    pub fn key(&mut self, key: KeyEvent, view: &View) -> Action {
        // Repeats and releases (terminals that report them) are not presses.
        if key.kind != KeyEventKind::Press {
            return Action::Nothing;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.editing {
            match key.code {
                KeyCode::Char(c) => self.order.filter.push(c),
                KeyCode::Backspace => {
                    self.order.filter.pop();
                }
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.order.filter.clear();
                }
                _ => return Action::Nothing,
            }
            self.selected = 0;
            return Action::Redraw;
        }
        if self.detail.is_some() {
            return match key.code {
                KeyCode::Char('q') => Action::Quit,
                KeyCode::Enter | KeyCode::Esc | KeyCode::Backspace => {
                    self.detail = None;
                    Action::Redraw
                }
                KeyCode::Char('p' | ' ') => {
                    self.paused = !self.paused;
                    Action::Redraw
                }
                _ => Action::Nothing,
            };
        }
        let rows = view.queries.len();
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.selected = (self.selected + 1).min(rows.saturating_sub(1)),
            KeyCode::Enter => match view.queries.get(self.selected) {
                Some(q) => self.detail = Some((q.pid, q.name.clone())),
                None => return Action::Nothing,
            },
            KeyCode::Char('s' | '>') => self.sort_by(step(self.order.column, 1)),
            KeyCode::Char('S' | '<') => self.sort_by(step(self.order.column, Column::ALL.len() - 1)),
            KeyCode::Char('r') => self.order.descending = !self.order.descending,
            KeyCode::Char('/') => {
                self.editing = true;
                self.order.filter.clear();
            }
            KeyCode::Esc if !self.order.filter.is_empty() => self.order.filter.clear(),
            KeyCode::Char('p' | ' ') => self.paused = !self.paused,
            _ => return Action::Nothing,
        }
        Action::Redraw
    }

    /// Sorts by `column` in its natural direction: names A first, figures largest first.
    fn sort_by(&mut self, column: Column) {
        self.order.column = column;
        self.order.descending = column != Column::Query;
    }

    /// The selection kept within the rows there are.
    pub fn clamp(&mut self, view: &View) {
        self.selected = self.selected.min(view.queries.len().saturating_sub(1));
    }
}

/// The column `by` places after `c`, wrapping.
fn step(c: Column, by: usize) -> Column {
    let i = Column::ALL.iter().position(|x| *x == c).unwrap_or(0);
    Column::ALL[(i + by) % Column::ALL.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::top::view::QueryRow;

    fn press(c: &mut Controls, code: KeyCode, view: &View) -> Action {
        c.key(KeyEvent::new(code, KeyModifiers::NONE), view)
    }

    fn view(names: &[&str]) -> View {
        View {
            queries: names.iter().map(|n| QueryRow { pid: 1, name: (*n).into(), ..QueryRow::default() }).collect(),
            ..View::default()
        }
    }

    #[test]
    fn keys_change_order_filter_pause_and_detail() {
        let v = view(&["a", "b"]);
        let mut c = Controls::default();
        assert_eq!(press(&mut c, KeyCode::Char('s'), &v), Action::Redraw);
        assert_eq!(c.order.column, Column::Out);
        press(&mut c, KeyCode::Char('S'), &v);
        press(&mut c, KeyCode::Char('S'), &v);
        assert_eq!(c.order.column, Column::Query);
        assert!(!c.order.descending, "names A first");
        press(&mut c, KeyCode::Char('S'), &v);
        assert_eq!(c.order.column, Column::Groups, "wraps");
        assert!(c.order.descending, "figures largest first");
        press(&mut c, KeyCode::Char('r'), &v);
        assert!(!c.order.descending);

        press(&mut c, KeyCode::Char('/'), &v);
        for ch in "ab".chars() {
            press(&mut c, KeyCode::Char(ch), &v);
        }
        assert_eq!(c.order.filter, "ab");
        assert_eq!(press(&mut c, KeyCode::Char('q'), &v), Action::Redraw, "q is a letter of the filter");
        press(&mut c, KeyCode::Backspace, &v);
        press(&mut c, KeyCode::Enter, &v);
        assert_eq!((c.order.filter.as_str(), c.editing), ("ab", false));
        press(&mut c, KeyCode::Esc, &v);
        assert_eq!(c.order.filter, "");

        press(&mut c, KeyCode::Down, &v);
        press(&mut c, KeyCode::Down, &v);
        assert_eq!(c.selected, 1, "stays on the last row");
        press(&mut c, KeyCode::Enter, &v);
        assert_eq!(c.detail, Some((1, "b".into())));
        press(&mut c, KeyCode::Char('p'), &v);
        assert!(c.paused);
        press(&mut c, KeyCode::Esc, &v);
        assert_eq!(c.detail, None);

        assert_eq!(press(&mut c, KeyCode::Char('q'), &v), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        c.editing = true;
        assert_eq!(c.key(ctrl_c, &v), Action::Quit, "also while typing a filter");
        let release = KeyEvent { kind: KeyEventKind::Release, ..KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE) };
        assert_eq!(c.key(release, &v), Action::Nothing);
    }
}
