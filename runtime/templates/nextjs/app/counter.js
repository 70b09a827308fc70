'use client';

import { useEffect, useState } from 'react';

export default function Counter() {
  const [count, setCount] = useState(0);
  const [hydrated, setHydrated] = useState(false);

  useEffect(() => {
    setHydrated(true);
  }, []);

  return (
    <div data-testid="counter" data-hydrated={hydrated ? 'true' : 'false'}>
      <button type="button" data-testid="counter-button" onClick={() => setCount((c) => c + 1)}>
        Clicked <span data-testid="counter-value">{count}</span> times
      </button>
    </div>
  );
}
